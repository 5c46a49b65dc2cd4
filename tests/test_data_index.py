"""The manifest index, on SQLite and on a PostgreSQL server: same answers as the manifest, multi-label look-ups, atomic and fresh."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from xray_generator.data import index as index_module
from xray_generator.data.index import (
    ManifestFingerprint,
    ManifestIndex,
    build_index,
    default_index_path,
    open_index,
)
from xray_generator.data.manifest import MANIFEST_COLUMNS, load_manifest, split_labels

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "dataset"


@pytest.fixture(scope="module")
def sample():
    return load_manifest(SAMPLE_DIR)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def index(request, sample, tmp_path_factory) -> ManifestIndex:
    """The sample's index in an SQLite file and in a PostgreSQL database: every query test runs on both."""
    if request.param == "sqlite":
        built = build_index(sample, tmp_path_factory.mktemp("index") / "sample.sqlite")
        yield built
        built.close()
        return
    from tests.conftest import _fresh_postgres_database

    database = _fresh_postgres_database(request.getfixturevalue("postgres_server_url"))
    built = build_index(sample, next(database))
    yield built
    built.close()
    database.close()  # drops the database


@pytest.fixture()
def manifest_copy(tmp_path) -> Path:
    """A writable copy of the sample's metadata.csv (images are not needed to index it)."""
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copyfile(SAMPLE_DIR / "metadata.csv", folder / "metadata.csv")
    return folder


FILTERS = [
    {},
    {"label": "COVID-19"},
    {"label": ["Normal", "Viral pneumonia"]},
    {"source": "pneumonia_kermany", "split": "test"},
    {"source": ["covid_ieee8023"], "view": "PA"},
    {"sex": "M", "min_age": 30, "max_age": 60},
    {"min_age": 65},
    {"split": ["val", "test"], "native_px": 224},
    {"label": "Pneumonia", "source": "covid_ieee8023", "sex": "F"},
]


@pytest.mark.parametrize("filters", FILTERS, ids=[str(f) for f in FILTERS])
def test_index_answers_like_the_manifest(sample, index, filters):
    expected = sorted(sample.query(**filters).table["image_id"])
    assert index.image_ids(**filters) == expected
    assert index.count(**filters) == len(expected)


def test_query_returns_typed_manifest_rows(sample, index):
    rows = index.query(source="covid_ieee8023", label="COVID-19")
    assert list(rows.columns) == list(MANIFEST_COLUMNS)
    assert rows.dtypes.to_dict() == sample.table.dtypes.to_dict()
    expected = sample.table.set_index("image_id").loc[rows["image_id"]].reset_index()
    pd.testing.assert_frame_equal(rows, expected[list(MANIFEST_COLUMNS)], check_dtype=True)


def test_labels_live_in_their_own_table(sample, index):
    with index.engine.connect() as connection:
        label_rows = connection.execute(sa.select(sa.func.count()).select_from(index_module.image_labels_table)).scalar()
    assert label_rows == int(sample.label_counts().sum())
    assert index.label_counts().to_dict() == sample.label_counts().to_dict()
    assert index.label_counts(source="pneumonia_kermany").index[0] == "Pneumonia"


def test_all_labels_requires_every_label(sample, index):
    both = index.image_ids(label=["Pneumonia", "COVID-19"], all_labels=True)
    covid = sample.query(label="COVID-19").table
    # ieee8023 COVID-19 films also carry Pneumonia; MHH's carry COVID-19 alone.
    expected = sorted(covid.loc[covid["labels"].map(lambda s: "Pneumonia" in split_labels(s)), "image_id"])
    assert both == expected and 0 < len(both) < len(covid)
    assert index.count(label=["Normal", "COVID-19"], all_labels=True) == 0


def test_unlabelled_filter(sample, index):
    unlabelled = set(sample.table.loc[sample.table["labels"].isna(), "image_id"])
    assert set(index.image_ids(unlabelled=True)) == unlabelled
    assert index.count(unlabelled=False) == len(sample) - len(unlabelled)


def test_limit_offset_and_distinct(index):
    first = index.query(limit=5)
    second = index.query(limit=5, offset=5)
    assert len(first) == 5 and not set(first["image_id"]) & set(second["image_id"])
    assert index.distinct("split") == ["test", "train", "val"]
    assert "COVID-19" in index.distinct("label")
    with pytest.raises(ValueError):
        index.distinct("age")


def test_to_manifest_resolves_files(index):
    manifest = index.to_manifest(label="Normal", split="test")
    assert len(manifest) > 0
    assert manifest.root == SAMPLE_DIR.resolve()
    assert all(path.is_file() for path in manifest.paths())


def test_unknown_filter_is_an_error(index):
    with pytest.raises(TypeError):
        index.count(colour="blue")


def test_build_accepts_an_sqlalchemy_url(sample, tmp_path):
    url = sa.URL.create("sqlite", database=str(tmp_path / "via_url.sqlite"))
    with build_index(sample, url) as built:
        assert built.count() == len(sample)
        assert built.meta()["rows"] == str(len(sample))


def test_open_index_builds_once_into_the_cache(manifest_copy, tmp_path):
    cache = tmp_path / "cache"
    with open_index(manifest_copy, cache_dir=cache) as first:
        built_at = first.meta()["built_at"]
        assert first.count() == len(load_manifest(manifest_copy))
    path = default_index_path(manifest_copy, cache)
    assert path.parent == cache / "index" and path.is_file()
    inode = path.stat().st_ino
    with open_index(manifest_copy, cache_dir=cache) as again:
        assert again.meta()["built_at"] == built_at
    assert path.stat().st_ino == inode  # not rewritten
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


def test_touched_but_unchanged_manifest_is_not_rebuilt(manifest_copy, tmp_path):
    cache = tmp_path / "cache"
    open_index(manifest_copy, cache_dir=cache).close()
    path = default_index_path(manifest_copy, cache)
    inode = path.stat().st_ino
    csv = manifest_copy / "metadata.csv"
    os.utime(csv, ns=(csv.stat().st_atime_ns, csv.stat().st_mtime_ns + 10**9))
    open_index(manifest_copy, cache_dir=cache).close()
    assert path.stat().st_ino == inode


def test_changed_manifest_is_rebuilt(manifest_copy, tmp_path):
    cache = tmp_path / "cache"
    open_index(manifest_copy, cache_dir=cache).close()
    csv = manifest_copy / "metadata.csv"
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    table.iloc[:10].to_csv(csv, index=False)
    with open_index(manifest_copy, cache_dir=cache) as rebuilt:
        assert rebuilt.count() == 10
        assert rebuilt.meta()["manifest_sha256"] == ManifestFingerprint.of(csv).sha256


def test_failed_rebuild_keeps_the_old_index(manifest_copy, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    open_index(manifest_copy, cache_dir=cache).close()
    path = default_index_path(manifest_copy, cache)

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(index_module, "_write_index", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        open_index(manifest_copy, cache_dir=cache, rebuild=True)
    monkeypatch.undo()
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    with ManifestIndex(sa.create_engine(sa.URL.create("sqlite", database=str(path)))) as old:
        assert old.count() == len(load_manifest(manifest_copy))


def test_default_cache_follows_the_environment(manifest_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "env_cache"))
    assert default_index_path(manifest_copy).parent == (tmp_path / "env_cache" / "index").resolve()


def test_open_index_without_a_manifest(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_index(tmp_path, cache_dir=tmp_path)


# ---------------------------------------------------------------------------- PostgreSQL specifics and generated films
def test_open_index_on_a_postgresql_server_builds_once_and_rebuilds_when_the_manifest_changes(manifest_copy, fresh_postgres_url):
    with open_index(manifest_copy, url=fresh_postgres_url) as first:
        built_at = first.meta()["built_at"]
        assert first.count() == len(load_manifest(manifest_copy))
    with open_index(manifest_copy, url=fresh_postgres_url) as again:
        assert again.meta()["built_at"] == built_at  # fresh: not rebuilt
    csv_path = manifest_copy / "metadata.csv"
    lines = csv_path.read_text().splitlines(keepends=True)
    csv_path.write_text("".join(lines[:-1]))
    with open_index(manifest_copy, url=fresh_postgres_url) as rebuilt:
        assert rebuilt.count() == len(lines) - 2


def test_an_unreachable_server_is_a_clear_error(tmp_path):
    url = f"postgresql+psycopg://nobody@/cxr?host={tmp_path}"  # no server listens on this socket folder
    with pytest.raises(index_module.IndexConnectionError, match="cannot reach the index database .*Is the server running"):
        index_module.check_index_url(url)
    with pytest.raises(index_module.IndexConnectionError, match="is not a database URL"):
        index_module.check_index_url("not a url")


def write_generated_manifest(folder: Path, n: int = 3) -> Path:
    from xray_generator.synthetic_dataset import MANIFEST_FIELDS

    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"file": f"xray_{i:06d}.png", "prompt": f"prompt {i}", "negative_prompt": "", "seed": i, "model": "ldm", "weights_sha256": "abc",
             "sampler": "dpm++", "steps": 7, "guidance": 4.0, "guidance_fraction": 0.28, "height": 256, "width": 256, "precision": "fp32",
             "batch_size": 1, "synthetic": True, "png_sha256": f"{i:064x}"} for i in range(n)]
    pd.DataFrame(rows, columns=MANIFEST_FIELDS).to_csv(folder / "manifest.csv", index=False)
    return folder


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_generated_films_register_once_and_survive_a_manifest_rebuild(backend, request, sample, tmp_path):
    url = f"sqlite:///{tmp_path / 'index.sqlite'}" if backend == "sqlite" else request.getfixturevalue("fresh_postgres_url")
    build_index(sample, url).close()
    folder = write_generated_manifest(tmp_path / "synth")
    assert index_module.register_generated(url, folder) == 3
    assert index_module.register_generated(url, folder) == 3  # a rerun refreshes, never duplicates
    build_index(sample, url).close()  # the manifest's tables are rebuilt; the generated films stay
    films = index_module.generated_films(url)
    assert len(films) == 3 and set(films["split"]) == {"synthetic"} and set(films["source"]) == {"synthetic:ldm"}
    assert list(films.columns) == list(MANIFEST_COLUMNS)
    assert films["file"].iloc[0] == str((folder / "xray_000000.png").resolve())
    assert films["report"].iloc[2] == "prompt 2" and "synthetic" in films["license"].iloc[0]
