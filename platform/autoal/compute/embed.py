"""`autoal embed`: a dataset or an image folder through a pretrained backbone, once, into a
Parquet pool of embeddings (the pool format of autoal.data.pool: id, y and split as in the source,
x the embedding), which `autoal run --dataset parquet:OUT` and `autoal label` learn on in seconds.

The source is cut into shards fixed by the source alone (image files or array rows
`shard_rows` at a time; a Parquet source's row groups), so a shard's output file is the same
however the work is spread. Ray Data's `map_batches` hands shard numbers to an actor pool
(one model load per actor, `gpus` each); an actor reads its shard, embeds it and writes
`part-NNNNN.parquet` to OUT (any filesystem pyarrow writes: local, s3://, gs://) as a hidden
temporary file renamed into place, so a file is final once it exists. A re-run with the same
arguments skips the shards whose files exist: a killed run resumes to the files of an
uninterrupted one. The driver holds shard descriptions (file names, row-group names), never
pixels or embeddings, except for sources that load whole (digits, CIFAR, SVHN, MedMNIST),
whose arrays go to the object store a shard at a time.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from autoal.nets import backbones
from autoal.errors import AutoALError
from autoal.data.lazy import features, filesystem
from autoal.data.parquet import pool_schema, row_group_rows, schema_metadata, shard_table
from autoal.data.sources import split_ref
from autoal.data.pool import UNLABELED

DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
MANIFEST = "_embed.json"   # the arguments that fix the output; a re-run must match them (readers skip _ files)
SHARD_ROWS = 4096          # rows per output file of file and array sources


@dataclass(frozen=True)
class FileShard:
    """Image files; ids and labels as `images:` gives them."""

    paths: tuple[str, ...]
    ids: np.ndarray
    y: np.ndarray

    def embed(self, embedder: backbones.Embedder, batch_size: int):
        from PIL import Image

        from autoal.data.sources import parse_file

        def decode(path):
            with Image.open(path) as image:
                return image.convert("RGB")

        out = []
        for start in range(0, len(self.paths), batch_size):
            batch = [parse_file(path, "image", decode) for path in self.paths[start:start + batch_size]]
            out.append(embedder.images(batch))
        return self.ids, np.concatenate(out), self.y, np.full(len(self.ids), "train")


@dataclass(frozen=True)
class ArrayShard:
    """Rows of a pool loaded whole, in the object store: a ref to (ids, x, y, split)."""

    ref: object

    def embed(self, embedder: backbones.Embedder, batch_size: int):
        import ray

        ids, x, y, split = ray.get(self.ref)
        return ids, _arrays(embedder, x, batch_size), y, split


@dataclass(frozen=True)
class RowGroupShard:
    """One row group of a Parquet pool of images."""

    location: str
    file: str
    group: int
    shape: tuple[int, ...]

    def embed(self, embedder: backbones.Embedder, batch_size: int):
        fs, _ = filesystem(self.location)
        with fs.open_input_file(self.file) as f:
            table = pq.ParquetFile(f).read_row_group(self.group, columns=["id", "x", "y", "split"])
        y = table.column("y").fill_null(UNLABELED).to_numpy().astype(np.int64)
        try:
            x = features(table.column("x"), self.shape)
        except ValueError:   # a row of another length than the shape metadata says
            raise AutoALError(f"{self.file}: rows of x do not match the shape metadata {list(self.shape)}") from None
        if not np.isfinite(x).all():
            raise AutoALError(f"{self.file}: row group {self.group} has NaN or infinite pixels")
        return table.column("id").to_numpy(), _arrays(embedder, x, batch_size), y, table.column("split").to_numpy(
            zero_copy_only=False)


def _arrays(embedder: backbones.Embedder, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([embedder.arrays(x[s:s + batch_size]) for s in range(0, len(x), batch_size)])


@dataclass(frozen=True)
class Plan:
    """What embedding a source means: its shards, the output's name and number of classes."""

    name: str
    classes: int
    rows: int
    shards: list


def plan(source: str, data_root: str, download: bool = False, shard_rows: int = SHARD_ROWS,
         classes: tuple[str, ...] | None = None) -> Plan:
    """The shards of `source` (a dataset reference); `classes` names an image folder's classes."""
    import ray

    from autoal.data import datasets, images

    kind, arg = split_ref(source)
    if classes and kind != "images":
        raise AutoALError(f"--classes names the classes of an image folder; {source} carries its own")
    if kind == "images":
        root, _ = images.parse_folder(arg)   # the size is the backbone's transforms'
        names, paths, ids, y = images.index_folder(root, classes)
        if len(names) < 2:
            raise AutoALError(f"{source} has {len(names)} class folders; a pool needs at least 2 classes: name them "
                              "with --classes a,b,... (class folders then hold each class's known labels)")
        paths = [str(path) for path in paths]
        shards = [FileShard(tuple(paths[s:s + shard_rows]), ids[s:s + shard_rows], y[s:s + shard_rows])
                  for s in range(0, len(paths), shard_rows)]
        return Plan(f"images:{root.name}", len(names), len(paths), shards)
    if kind == "parquet" and arg:
        fs, path = filesystem(arg)
        try:   # the metadata only: a pass checking every row would hold a batch of wide images in the driver
            data = pads.dataset(path, filesystem=fs, format="parquet")
            meta, fragments = data.schema.metadata or {}, list(data.get_fragments())
            groups = [(fragment.path, group, fragment.metadata.row_group(group).num_rows) for fragment in fragments
                      for group in range(fragment.metadata.num_row_groups)]
        except (pa.ArrowInvalid, OSError) as exc:
            raise AutoALError(f"parquet pool {arg} is not readable Parquet: {exc}") from None
        shape = schema_metadata(meta, b"shape", arg, lambda v: tuple(json.loads(v)), "a JSON list of ints", ())
        classes = schema_metadata(meta, b"classes", arg, int, "an integer", 0)
        _need_images(source, shape)
        return Plan(meta.get(b"name", path.rsplit("/", 1)[-1].encode()).decode(errors="replace"), classes,
                    sum(rows for _, _, rows in groups), [RowGroupShard(arg, file, group, shape)
                                                         for file, group, _ in groups])
    pool = datasets.load(source, data_root, download)
    _need_images(source, pool.shape)
    shards = [ArrayShard(ray.put((pool.ids[s:s + shard_rows], pool.x[s:s + shard_rows], pool.labels(
        slice(s, s + shard_rows)), np.asarray(pool.split[s:s + shard_rows]).astype(str))))
        for s in range(0, len(pool), shard_rows)]
    return Plan(pool.name, pool.classes, len(pool), shards)


def _need_images(source: str, shape: tuple[int, ...]) -> None:
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise AutoALError(f"{source}: a backbone embeds images (1 or 3 channels, H, W); this pool has samples "
                          f"of shape {list(shape)}")


class ShardEmbedder:
    """A Ray Data actor: the backbone loaded once; each call embeds and writes the shards it is given.
    A shard that cannot be read comes back as an error message, for the driver to report."""

    def __init__(self, backbone: str, parameters, shards, out: str, schema: bytes, batch_size: int,
                 device: str):
        import ray

        self.embedder = backbones.Embedder(backbone, ray.get(parameters), device)   # refs: Ray passes them as they are
        self.shards, self.out, self.batch_size = ray.get(shards), out, batch_size
        self.schema = pa.ipc.read_schema(pa.py_buffer(schema))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, errors = [], []
        for index in batch["shard"]:
            try:
                rows.append(write_shard(self.shards[int(index)], int(index), self.embedder, self.out,
                                        self.schema, self.batch_size))
                errors.append("")
            except AutoALError as exc:
                rows.append(0)
                errors.append(str(exc))
        return {"shard": batch["shard"], "rows": np.array(rows), "error": np.array(errors)}


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def write_shard(shard, index: int, embedder: backbones.Embedder, out: str, schema: pa.Schema,
                batch_size: int) -> int:
    """Embed one shard and write its file: a hidden temporary file, then renamed into place."""
    ids, x, y, split = shard.embed(embedder, batch_size)
    fs, path = filesystem(out)
    tmp = f"{path}/.{part_name(index)}.{uuid.uuid4().hex}"
    pq.write_table(shard_table(schema, ids, x, y, split), tmp, filesystem=fs, row_group_size=row_group_rows(len(ids)))
    fs.move(tmp, f"{path}/{part_name(index)}")
    return len(ids)


def open_output(out: str, manifest: dict) -> set[int]:
    """Make OUT, or check that it holds a run of the same embedding: the shards already written."""
    fs, path = filesystem(out)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise AutoALError(f"{out} is a file; OUT names the directory the embeddings go to")
    entries = fs.get_file_info(pafs.FileSelector(path)) if info.type == pafs.FileType.Directory else []
    names = {entry.base_name: entry for entry in entries}
    if MANIFEST in names:
        with fs.open_input_stream(f"{path}/{MANIFEST}") as f:
            saved = json.loads(f.read())
        if saved != manifest:
            changed = sorted(k for k in manifest if saved.get(k) != manifest[k])
            raise AutoALError(f"{out} holds an embedding made with other arguments ({', '.join(changed)}); "
                              "re-run with the same ones to resume, or choose a new directory")
    elif names:
        raise AutoALError(f"{out} exists and is not an embedding in progress; choose a new or empty directory")
    else:
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(f"{path}/{MANIFEST}") as f:
            f.write(json.dumps(manifest, indent=1).encode())
    for name in names:
        if name.startswith(".part-"):   # a killed run's unfinished shard
            fs.delete_file(f"{path}/{name}")
    return {int(name[5:10]) for name in names if name.startswith("part-") and name.endswith(".parquet")}


@dataclass(frozen=True)
class EmbedResult:
    out: str
    rows: int       # rows embedded by this run (skipped shards not counted)
    skipped: int    # shards already written by an earlier run
    seconds: float  # from the first shard handed out: actor start-up and model loads included
    steady: float | None = None   # rows/s after the first shard arrived (None: one shard), start-up excluded

    @property
    def rows_per_s(self) -> float:
        return self.rows / max(self.seconds, 1e-9)


def embed(source: str, out: str, backbone: str, *, weights: str | None = None, download: bool = False,
          dtype: str = "float32", actors: int = 1, gpus: float = 0.0, batch_size: int = 32,
          shard_rows: int = SHARD_ROWS, data_root: str = "data", classes: tuple[str, ...] | None = None,
          log=print) -> EmbedResult:
    """Embed `source` into the Parquet pool `out` (see the module docstring); `log` gets a line per shard."""
    import ray
    import ray.data   # before runtime quiets Ray's loggers: importing it configures them

    from autoal.compute import runtime

    if dtype not in DTYPES:
        raise AutoALError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if actors < 1 or batch_size < 1 or shard_rows < 1 or gpus < 0:
        raise AutoALError("--actors, --batch-size and --shard-rows must be positive and --gpus not negative")
    parameters = backbones.state_dict(backbone, weights, download)
    backbones.build(backbone, parameters)   # a wrong architecture is one error here, not one per actor
    runtime.init_ray()
    runtime.check_resources(actors, actors, gpus, log)   # each actor: 1 CPU and `gpus` GPUs
    work = plan(source, data_root, download, shard_rows, classes)
    manifest = dict(source=source, backbone=backbone, weights=weights or backbones.get(backbone).weights,
                    dtype=dtype, shard_rows=shard_rows, shards=len(work.shards), rows=work.rows)
    done = open_output(out, manifest)
    todo = [i for i in range(len(work.shards)) if i not in done]
    if done:
        log(f"resuming: {len(done)} of {len(work.shards)} shards already written")
    schema = pool_schema(f"{work.name}+{backbone}", (backbones.get(backbone).dim,), work.classes, DTYPES[dtype])
    start, rows, first = time.perf_counter(), 0, None
    if todo:
        refs = [ray.put(parameters), ray.put(work.shards)]   # kept alive here while the actors read them
        dataset = ray.data.from_items([{"shard": i} for i in todo], override_num_blocks=len(todo)).map_batches(
            ShardEmbedder, compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=gpus, num_cpus=1,
            batch_size=1, batch_format="numpy", fn_constructor_kwargs=dict(
                backbone=backbone, parameters=refs[0], shards=refs[1], out=out,
                schema=schema.serialize().to_pybytes(), batch_size=batch_size,
                device="cuda" if gpus > 0 else "cpu"))
        for finished, row in enumerate(dataset.iter_rows(), 1):
            if row["error"]:
                raise AutoALError(str(row["error"]))
            rows += int(row["rows"])
            seconds = time.perf_counter() - start
            first = first or (seconds, rows)
            log(f"wrote {part_name(int(row['shard']))}: {finished} of {len(todo)} shards, {rows:,} rows, "
                f"{rows / seconds:,.1f} rows/s")
    seconds = time.perf_counter() - start
    steady = (rows - first[1]) / max(seconds - first[0], 1e-9) if first and rows > first[1] else None
    return EmbedResult(out, rows, len(done), seconds, steady)
