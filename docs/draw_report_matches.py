"""Draw the hand-check sample of docs/report_matching.md: 50 distinct IU impressions used as training prompts, each with one film it matched."""
import random, sys
import pandas as pd
from xray_generator.data.manifest import load_manifest
from xray_generator.paths import shared_data_dir
from xray_generator.data.prompts import prompt_variants, matching_report_prompts, REPORT_VARIANT
from xray_generator.data.report_prompts import load_report_prompts
seed = int(sys.argv[1])
m = load_manifest(shared_data_dir()); t = m.table[m.table.split == 'train']
table = load_report_prompts().set_index('impression')
uses, n_films = {}, 0
for _, row in t.iterrows():
    lab = row['labels'] if not pd.isna(row['labels']) else None
    cands = matching_report_prompts(lab)
    if not cands: continue
    p = prompt_variants(row, 6)[REPORT_VARIANT]
    c = next(c for c in cands if c in p)
    uses.setdefault(c, []).append((row.image_id, lab, p)); n_films += 1
print(f"{len(table)} impressions in the table; {len(uses)} distinct impressions used by {n_films} of {len(t)} train films")
rng = random.Random(seed)
for i, k in enumerate(rng.sample(sorted(uses), 50), 1):
    image_id, lab, p = rng.choice(uses[k])
    r = table.loc[k]
    print(f"{i}. `{image_id}` | film: {lab} | read: +[{r.findings}] -[{r.negated}]{' exhaustive' if r.exhaustive else ''}  \n   \"{p}\"")
