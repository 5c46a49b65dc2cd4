"""A database index over a manifest, for fast filtered look-ups in the explorer and the samplers.

SQLite is the embedded default: one file in the cache folder (``outputs/cache/index/``), rebuilt
when the manifest changes. Any SQLAlchemy URL can be given instead: a lab shares one PostgreSQL
index (``postgresql+psycopg://...``; the tests run against a real server too). The code only uses
SQLAlchemy Core constructs, so it is dialect-neutral; an unreachable server is an
`IndexConnectionError` that says so. The CSV manifest stays the source of
truth: the index is derived data and can always be deleted.

Tables
------
``images``        one row per image, the manifest columns (``image_id`` is the primary key);
``image_labels``  one row per (image_id, label), because an image can carry several labels;
``index_meta``    key/value facts about the build: manifest path, size, mtime, sha256, root folder;
``generated_images`` films registered by ``generate-dataset --index-url`` (never dropped by a rebuild).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from xray_generator.data.manifest import MANIFEST_COLUMNS, Manifest, load_manifest, split_labels

SCHEMA_VERSION = "1"
_INSERT_CHUNK = 1000

metadata = sa.MetaData()

images_table = sa.Table(
    "images",
    metadata,
    sa.Column("image_id", sa.String(255), primary_key=True),
    sa.Column("file", sa.String(1024), nullable=False),
    sa.Column("source", sa.String(64), nullable=False, index=True),
    sa.Column("source_repo", sa.String(255)),
    sa.Column("patient_id", sa.String(255), nullable=False, index=True),
    sa.Column("view", sa.String(16), index=True),
    sa.Column("sex", sa.String(8), index=True),
    sa.Column("age", sa.Float),
    sa.Column("labels", sa.Text),
    sa.Column("report", sa.Text),
    sa.Column("license", sa.String(255), nullable=False),
    sa.Column("split", sa.String(8), nullable=False, index=True),
    sa.Column("report_kind", sa.String(32)),
    sa.Column("native_px", sa.Integer),
)

image_labels_table = sa.Table(
    "image_labels",
    metadata,
    sa.Column("image_id", sa.String(255), sa.ForeignKey("images.image_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("label", sa.String(128), primary_key=True, index=True),
)

index_meta_table = sa.Table(
    "index_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


@dataclass(frozen=True)
class ManifestFingerprint:
    """What identifies one version of a manifest file."""

    path: str
    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def of(cls, csv_path: str | Path) -> "ManifestFingerprint":
        csv_path = Path(csv_path).resolve()
        stat = csv_path.stat()
        digest = hashlib.sha256()
        with open(csv_path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return cls(str(csv_path), stat.st_size, stat.st_mtime_ns, digest.hexdigest())


def _manifest_csv(path: str | Path) -> Path:
    path = Path(path)
    return path / "metadata.csv" if path.is_dir() else path


def default_index_path(manifest_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where the SQLite index of a manifest lives by default.

    ``<cache_dir>/index/<folder name>-<12 hex of the manifest's absolute path>.sqlite``, with
    `cache_dir` defaulting to `xray_generator.paths.cache_dir()` (``outputs/cache``, env
    ``CXR_CACHE_DIR``). The path hash keeps two manifests with the same folder name apart.
    """
    from xray_generator.paths import cache_dir as default_cache_dir

    csv_path = _manifest_csv(manifest_path).resolve()
    tag = hashlib.sha256(str(csv_path).encode("utf-8")).hexdigest()[:12]
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / "index" / f"{csv_path.parent.name or 'manifest'}-{tag}.sqlite"


def _sqlite_url(path: Path) -> sa.URL:
    return sa.URL.create("sqlite", database=str(path))


def _rows_for(table: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    images: list[dict] = []
    labels: list[dict] = []
    for record in table[list(MANIFEST_COLUMNS)].to_dict("records"):
        row = {k: (None if v is pd.NA or (isinstance(v, float) and v != v) else v) for k, v in record.items()}
        if row["age"] is not None:
            row["age"] = float(row["age"])
        if row["native_px"] is not None:
            row["native_px"] = int(row["native_px"])
        images.append(row)
        for label in dict.fromkeys(split_labels(row["labels"])):  # keeps order, drops repeats
            labels.append({"image_id": row["image_id"], "label": label})
    return images, labels


def _write_index(engine: Engine, manifest: Manifest, meta: dict[str, str]) -> None:
    images, labels = _rows_for(manifest.table)
    with engine.begin() as connection:
        metadata.drop_all(connection)
        metadata.create_all(connection)
        for start in range(0, len(images), _INSERT_CHUNK):
            connection.execute(images_table.insert(), images[start : start + _INSERT_CHUNK])
        for start in range(0, len(labels), _INSERT_CHUNK):
            connection.execute(image_labels_table.insert(), labels[start : start + _INSERT_CHUNK])
        connection.execute(index_meta_table.insert(), [{"key": k, "value": v} for k, v in meta.items()])


def _build_meta(manifest: Manifest, fingerprint: ManifestFingerprint | None) -> dict[str, str]:
    meta = {
        "schema_version": SCHEMA_VERSION,
        "root": str(Path(manifest.root).resolve()),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows": str(len(manifest)),
    }
    if fingerprint is not None:
        meta.update(
            manifest_path=fingerprint.path,
            manifest_size=str(fingerprint.size),
            manifest_mtime_ns=str(fingerprint.mtime_ns),
            manifest_sha256=fingerprint.sha256,
        )
    return meta


def build_index(
    manifest: Manifest,
    target: str | Path | sa.URL,
    *,
    fingerprint: ManifestFingerprint | None = None,
) -> "ManifestIndex":
    """Write the index of `manifest` and return it opened.

    Parameters
    ----------
    manifest : a loaded `Manifest`.
    target : a file path (SQLite; written into a temp file in the same folder, then moved into place
        with os.replace, so readers see either the old or the new index, never half of one), or an
        SQLAlchemy URL string/object such as ``postgresql+psycopg://user@host/cxr`` (tables are
        dropped and recreated in one transaction).
    fingerprint : the manifest file's `ManifestFingerprint`, stored so that `open_index` can tell
        whether the index is stale. Optional.
    """
    meta = _build_meta(manifest, fingerprint)
    if isinstance(target, sa.URL) or (isinstance(target, str) and "://" in target):
        engine = connect_engine(target)
        _write_index(engine, manifest, meta)
        return ManifestIndex(engine)

    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        engine = sa.create_engine(_sqlite_url(tmp))
        try:
            _write_index(engine, manifest, meta)
        finally:
            engine.dispose()
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the index is as readable as the manifest
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ManifestIndex(sa.create_engine(_sqlite_url(path)))


def _is_fresh(index: "ManifestIndex", csv_path: Path) -> tuple[bool, ManifestFingerprint | None]:
    """Cheap check first (size + mtime), then the content hash when the file was touched."""
    try:
        meta = index.meta()
    except sa.exc.SQLAlchemyError:
        return False, None
    if meta.get("schema_version") != SCHEMA_VERSION or meta.get("manifest_path") != str(csv_path.resolve()):
        return False, None
    stat = csv_path.stat()
    if meta.get("manifest_size") == str(stat.st_size) and meta.get("manifest_mtime_ns") == str(stat.st_mtime_ns):
        return True, None
    fingerprint = ManifestFingerprint.of(csv_path)
    return meta.get("manifest_sha256") == fingerprint.sha256, fingerprint


def open_index(
    manifest_path: str | Path | None = None,
    *,
    url: str | sa.URL | None = None,
    cache_dir: str | Path | None = None,
    rebuild: bool = False,
) -> "ManifestIndex":
    """Open the index of a manifest, building or rebuilding it when it is missing or stale.

    Parameters
    ----------
    manifest_path : `metadata.csv` or its folder; default `xray_generator.paths.default_data_dir()`.
    url : an SQLAlchemy URL to use instead of the default SQLite file. It is rebuilt when its stored
        manifest sha256 differs from the file's (or `rebuild` is True).
    cache_dir : folder for the default SQLite file (see `default_index_path`).
    rebuild : bool, default False. Rebuild even if the index looks current.

    A touched but unchanged manifest (same sha256, new mtime) is not rebuilt.
    """
    from xray_generator.paths import default_data_dir

    csv_path = _manifest_csv(manifest_path if manifest_path is not None else default_data_dir()).resolve()
    if not csv_path.is_file():
        raise FileNotFoundError(f"no manifest at {csv_path}")
    target: str | Path | sa.URL = url if url is not None else default_index_path(csv_path, cache_dir)

    if not rebuild and (url is not None or Path(target).is_file()):
        index = ManifestIndex(connect_engine(target) if url is not None else sa.create_engine(_sqlite_url(Path(target))))
        fresh, _ = _is_fresh(index, csv_path)
        if fresh:
            return index
        index.close()

    fingerprint = ManifestFingerprint.of(csv_path)
    manifest = load_manifest(csv_path)
    # the file may have changed while it was read; the fingerprint then says "stale" next time
    return build_index(manifest, target, fingerprint=fingerprint)


def _as_list(value: str | Iterable[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


class ManifestIndex:
    """Queries over an index database. Build one with `build_index` or `open_index`."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "ManifestIndex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _connect(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as connection:
            yield connection

    def meta(self) -> dict[str, str]:
        """The build facts: schema_version, root, built_at, rows and the manifest fingerprint."""
        with self._connect() as connection:
            return {k: v for k, v in connection.execute(sa.select(index_meta_table.c.key, index_meta_table.c.value))}

    @property
    def root(self) -> Path:
        """The folder the `file` paths are relative to (as recorded at build time)."""
        return Path(self.meta()["root"])

    def _where(
        self,
        *,
        label: str | Iterable[str] | None = None,
        all_labels: bool = False,
        source: str | Iterable[str] | None = None,
        view: str | Iterable[str] | None = None,
        sex: str | Iterable[str] | None = None,
        split: str | Iterable[str] | None = None,
        min_age: float | None = None,
        max_age: float | None = None,
        native_px: int | Iterable[int] | None = None,
        unlabelled: bool | None = None,
    ) -> list[sa.ColumnElement[bool]]:
        images = images_table.c
        clauses: list[sa.ColumnElement[bool]] = []
        labels = _as_list(label)
        if labels is not None:
            with_label = sa.select(image_labels_table.c.image_id).where(image_labels_table.c.label.in_(labels))
            if all_labels and len(set(labels)) > 1:
                with_label = with_label.group_by(image_labels_table.c.image_id).having(
                    sa.func.count(sa.distinct(image_labels_table.c.label)) == len(set(labels))
                )
            clauses.append(images.image_id.in_(with_label))
        if unlabelled is not None:
            any_label = sa.select(image_labels_table.c.image_id)
            clauses.append(images.image_id.not_in(any_label) if unlabelled else images.image_id.in_(any_label))
        for column, value in (("source", source), ("view", view), ("sex", sex), ("split", split)):
            wanted = _as_list(value)
            if wanted is not None:
                clauses.append(images[column].in_(wanted))
        if native_px is not None:
            sizes = [native_px] if isinstance(native_px, int) else list(native_px)
            clauses.append(images.native_px.in_(sizes))
        if min_age is not None:
            clauses.append(images.age >= min_age)
        if max_age is not None:
            clauses.append(images.age <= max_age)
        return clauses

    def query(self, *, limit: int | None = None, offset: int = 0, **filters: object) -> pd.DataFrame:
        """Rows matching every filter, as a typed DataFrame with the manifest columns, by image_id.

        Filters (all optional): ``label`` (any of the given labels; ``all_labels=True`` requires
        all of them), ``source``, ``view``, ``sex``, ``split`` (a value or a list of values),
        ``min_age`` / ``max_age`` (inclusive, years; rows without an age never match an age filter),
        ``native_px``, ``unlabelled`` (True: rows without labels; False: rows with at least one).
        """
        statement = sa.select(*[images_table.c[c] for c in MANIFEST_COLUMNS]).where(*self._where(**filters))
        statement = statement.order_by(images_table.c.image_id).offset(offset)
        if limit is not None:
            statement = statement.limit(limit)
        with self._connect() as connection:
            rows = connection.execute(statement).all()
        table = pd.DataFrame([tuple(r) for r in rows], columns=list(MANIFEST_COLUMNS))
        return table.astype(MANIFEST_COLUMNS)

    def image_ids(self, **filters: object) -> list[str]:
        """The image_ids matching the filters of `query`, sorted."""
        statement = sa.select(images_table.c.image_id).where(*self._where(**filters)).order_by(images_table.c.image_id)
        with self._connect() as connection:
            return list(connection.execute(statement).scalars())

    def count(self, **filters: object) -> int:
        """How many images match the filters of `query`."""
        statement = sa.select(sa.func.count()).select_from(images_table).where(*self._where(**filters))
        with self._connect() as connection:
            return int(connection.execute(statement).scalar_one())

    def to_manifest(self, root: str | Path | None = None, **filters: object) -> Manifest:
        """The matching rows as a `Manifest` (root: the recorded one unless given)."""
        return Manifest(self.query(**filters), Path(root) if root is not None else self.root)

    def label_counts(self, **filters: object) -> pd.Series:
        """Images per label among the matching rows, most common first (ties by name)."""
        subset = sa.select(images_table.c.image_id).where(*self._where(**filters))
        n = sa.func.count().label("n")
        statement = (
            sa.select(image_labels_table.c.label, n)
            .where(image_labels_table.c.image_id.in_(subset))
            .group_by(image_labels_table.c.label)
            .order_by(n.desc(), image_labels_table.c.label)
        )
        with self._connect() as connection:
            rows = connection.execute(statement).all()
        return pd.Series({label: int(count) for label, count in rows}, dtype="int64", name="count")

    def distinct(self, column: str) -> list[str]:
        """Sorted distinct non-empty values of a text column of ``images`` (e.g. 'source'), or of 'label'."""
        if column == "label":
            col = image_labels_table.c.label
        elif column in images_table.c and column not in ("age", "native_px"):
            col = images_table.c[column]
        else:
            raise ValueError(f"column must be 'label' or a text column of the manifest, got {column!r}")
        statement = sa.select(col).where(col.is_not(None)).distinct().order_by(col)
        with self._connect() as connection:
            return [v for v in connection.execute(statement).scalars() if v != ""]


# ---------------------------------------------------------------------------- connections
class IndexConnectionError(RuntimeError):
    """The index database cannot be reached (no server, wrong URL, missing driver); the message says which and what to do."""


def _shown_url(url: str | sa.URL) -> str:
    return sa.make_url(url).render_as_string(hide_password=True)


def connect_engine(url: str | sa.URL) -> Engine:
    """An engine for `url` that has answered one query; IndexConnectionError saying what is wrong otherwise.

    SQLite (the embedded default) needs no server; a PostgreSQL URL such as
    ``postgresql+psycopg://user@host/cxr`` or ``postgresql+psycopg://user@/cxr?host=/run/postgresql``
    needs a running server and the psycopg driver (in requirements.txt).
    """
    try:
        engine = sa.create_engine(url)
    except sa.exc.ArgumentError as exc:
        raise IndexConnectionError(f"{url!r} is not a database URL (e.g. sqlite:///index.sqlite or postgresql+psycopg://user@host/cxr): {exc}") from exc
    except ModuleNotFoundError as exc:
        raise IndexConnectionError(f"the database driver for {_shown_url(url)} is not installed ({exc.name}); "
                                   "PostgreSQL needs psycopg: pip install -r requirements.txt") from exc
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("select 1"))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc).splitlines()[0]
        raise IndexConnectionError(f"cannot reach the index database at {_shown_url(url)}: {reason}. Is the server running and the URL right? "
                                   "Without a server, use the embedded SQLite default (sqlite:///<file>).") from exc
    return engine


def check_index_url(url: str | sa.URL) -> None:
    """IndexConnectionError unless `url` answers a query (called before a long job that ends by writing there)."""
    connect_engine(url).dispose()


# ---------------------------------------------------------------------------- generated films
# Kept in their own MetaData: rebuilding the manifest's tables (drop_all) must never drop what was generated.
generated_metadata = sa.MetaData()

generated_images_table = sa.Table(
    "generated_images",
    generated_metadata,
    sa.Column("image_id", sa.String(255), primary_key=True),  # "synthetic-" + the PNG's sha256: the same film registers once
    sa.Column("file", sa.String(2048), nullable=False),  # absolute path of the PNG
    sa.Column("dataset_dir", sa.String(2048), nullable=False, index=True),
    sa.Column("model", sa.String(64), nullable=False, index=True),
    sa.Column("weights_sha256", sa.String(64), nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("negative_prompt", sa.Text),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("sampler", sa.String(32)),
    sa.Column("steps", sa.Integer),
    sa.Column("guidance", sa.Float),
    sa.Column("guidance_fraction", sa.Float),
    sa.Column("width", sa.Integer),
    sa.Column("png_sha256", sa.String(64), nullable=False),
    sa.Column("registered_at", sa.String(32), nullable=False),
)
SYNTHETIC_SPLIT = "synthetic"
SYNTHETIC_LICENCE = "synthetic (CXR Studio generate-dataset); research use only, not for clinical use"


def register_generated(url: str | sa.URL, dataset_dir: str | Path) -> int:
    """Add (or refresh) the rows of a generate-dataset folder's manifest.csv in the index at `url`; returns how many.

    One transaction: a reader sees all of a folder's films or none.
    """
    import csv

    folder = Path(dataset_dir).resolve()
    with open(folder / "manifest.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    records = [{
        "image_id": f"synthetic-{row['png_sha256']}", "file": str(folder / row["file"]), "dataset_dir": str(folder),
        "model": row["model"], "weights_sha256": row["weights_sha256"], "prompt": row["prompt"], "negative_prompt": row["negative_prompt"],
        "seed": int(row["seed"]), "sampler": row["sampler"], "steps": int(row["steps"]), "guidance": float(row["guidance"]),
        "guidance_fraction": float(row["guidance_fraction"]), "width": int(row["width"]), "png_sha256": row["png_sha256"],
        "registered_at": now,
    } for row in rows]
    engine = connect_engine(url)
    try:
        with engine.begin() as connection:
            generated_metadata.create_all(connection)
            ids = [record["image_id"] for record in records]
            for start in range(0, len(ids), _INSERT_CHUNK):
                connection.execute(generated_images_table.delete().where(generated_images_table.c.image_id.in_(ids[start:start + _INSERT_CHUNK])))
            for start in range(0, len(records), _INSERT_CHUNK):
                connection.execute(generated_images_table.insert(), records[start:start + _INSERT_CHUNK])
    finally:
        engine.dispose()
    return len(records)


def generated_films(url: str | sa.URL) -> pd.DataFrame:
    """The registered generated films as manifest rows (absolute `file`), so they filter beside real ones.

    source is ``synthetic:<model>``, split ``synthetic``, the prompt is the note (report_kind
    ``generation prompt``) and labels are empty: a prompt asks for a finding, it does not prove one.
    """
    engine = connect_engine(url)
    try:
        with engine.connect() as connection:
            if not sa.inspect(connection).has_table(generated_images_table.name):
                rows = []
            else:
                rows = connection.execute(sa.select(generated_images_table).order_by(generated_images_table.c.image_id)).mappings().all()
    finally:
        engine.dispose()
    table = pd.DataFrame([{
        "image_id": row["image_id"], "file": row["file"], "source": f"synthetic:{row['model']}",
        "source_repo": f"weights {row['weights_sha256']}, seed {row['seed']}, {row['sampler']} {row['steps']} steps, guidance {row['guidance']:g}",
        "patient_id": "synthetic", "view": None, "sex": None, "age": None, "labels": None, "report": row["prompt"],
        "license": SYNTHETIC_LICENCE, "split": SYNTHETIC_SPLIT, "report_kind": "generation prompt", "native_px": row["width"],
    } for row in rows], columns=list(MANIFEST_COLUMNS))
    return table.astype(MANIFEST_COLUMNS)
