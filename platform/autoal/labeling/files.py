"""The files a person labels with: a round's queries out, the answers back in.

Out: `round-NNN.csv` (id, source, predicted, confidence, and an empty label
column to fill), `round-NNN.html` (a contact sheet, one thumbnail per query)
and `round-NNN.json` (Label Studio tasks, with the model's guess as a
prediction; `label-studio.xml` is the matching labeling config). In: the
filled CSV, or a Label Studio JSON export of those tasks. An answer is a class
name, `skip` (seen, no label) or `ood` (none of the classes); Label Studio's
own "skip" (a cancelled annotation) reads as `skip`. Readers check the file's
form only; the project checks the answers against its queries.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from autoal.errors import AutoALError
from autoal.safe_io import atomic_write, read_text, shown

SKIP, OOD_ANSWER = "skip", "ood"
CONTROL, OBJECT = "label", "image"  # Label Studio's <Choices name> and <Image name>
QUERY_COLUMNS = ["id", "source", "predicted", "confidence"]
ANSWERS_BYTES = 1 << 30           # a Label Studio export embeds each image: large, but bounded


def label_studio_config(classes: tuple[str, ...]) -> str:
    """The labeling config of a Label Studio project for these classes."""
    choices = "\n".join(f'    <Choice value="{html.escape(c)}"/>' for c in (*classes, SKIP, OOD_ANSWER))
    return (f'<View>\n  <Image name="{OBJECT}" value="$image"/>\n'
            f'  <Choices name="{CONTROL}" toName="{OBJECT}" choice="single" showInline="true">\n'
            f"{choices}\n  </Choices>\n</View>\n")


def png(image: np.ndarray, source: str, size: int) -> bytes:
    """A PNG of at most size x size pixels: from the source file when there is one, else from
    the pool's pixels (float [0, 1], channels first)."""
    from PIL import Image

    if source:
        with Image.open(source) as opened:
            picture = opened.convert("RGB")
    else:
        pixels = np.clip(np.asarray(image) * 255, 0, 255).astype(np.uint8)
        picture = Image.fromarray(pixels[0] if len(pixels) == 1 else pixels.transpose(1, 2, 0))
        scale = max(1, size // max(picture.size))
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    picture.thumbnail((size, size))
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def data_uri(png_bytes: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode()


def write_round(folder: Path, round_: int, batch: pd.DataFrame, images: np.ndarray | None,
                write=atomic_write) -> list[Path]:
    """Write round `round_`'s queries with `write` (the project's journaled writer); `images` (pool
    pixels, row-aligned with batch) adds the contact sheet and Label Studio tasks. Returns the paths."""
    stem = folder / f"round-{round_:03d}"
    written = [stem.with_suffix(".csv")]
    write(written[0], batch[QUERY_COLUMNS].assign(label="").to_csv(index=False).encode())
    if images is None:
        return written
    rows = list(batch.itertuples(index=False))
    thumbs = [data_uri(png(image, row.source, 128)) for image, row in zip(images, rows)]
    write(stem.with_suffix(".html"), contact_sheet(rows, thumbs, f"round {round_}").encode())
    tasks = [_task(row, data_uri(png(image, row.source, 512)), round_) for image, row in zip(images, rows)]
    write(stem.with_suffix(".json"), json.dumps(tasks, indent=1).encode())
    return [*written, stem.with_suffix(".html"), stem.with_suffix(".json")]


def _guess(row) -> str:
    return f"{row.predicted} ({row.confidence:.2f})" if row.predicted else "no model yet"


def contact_sheet(rows: list, thumbs: list[str], title: str) -> str:
    cards = "\n".join(
        f'<figure><img src="{thumb}" alt="{row.id}"><figcaption><b>{row.id}</b><br>'
        f"{html.escape(Path(row.source).name if row.source else '')}<br>{html.escape(_guess(row))}"
        "</figcaption></figure>"
        for row, thumb in zip(rows, thumbs))
    style = ("body{font-family:sans-serif}figure{display:inline-block;margin:6px;width:140px;vertical-align:top}"
             "img{width:128px;height:128px;object-fit:contain;image-rendering:pixelated;background:#eee}"
             "figcaption{font-size:11px;word-break:break-all}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>autoal {title}</title><style>{style}</style>"
            f"</head><body><h1>autoal queries, {title}</h1><p>Fill the label column of the CSV with a class, "
            f"{SKIP} or {OOD_ANSWER}; the model's guess is under each image.</p>\n{cards}\n</body></html>\n")


def _task(row, image: str, round_: int) -> dict:
    task = {"data": {"image": image, "autoal_id": str(row.id), "source": row.source}}
    if row.predicted:
        task["predictions"] = [{"model_version": f"autoal round {round_}", "score": float(row.confidence),
                                "result": [{"from_name": CONTROL, "to_name": OBJECT, "type": "choices",
                                            "value": {"choices": [row.predicted]}}]}]
    return task


def read_answers(path: str | Path) -> pd.DataFrame:
    """(id, answer) of every answered query in a filled CSV or a Label Studio JSON export."""
    path = Path(path)
    text = read_text(path, ANSWERS_BYTES, "answers file")
    if not text.strip():
        raise AutoALError(f"answers file {path} is empty")
    frame = _read_label_studio(path, text) if path.suffix.lower() == ".json" else _read_csv(path, text)
    frame = frame[frame["answer"] != ""]
    bad = frame["id"][~frame["id"].map(_sample_id)]
    if len(bad):
        raise AutoALError(f"answers file {path}: id {shown(bad.iloc[0])} is not a sample id (ASCII digits, "
                          "below 2**63)")
    return pd.DataFrame({"id": frame["id"].astype(np.int64).to_numpy(np.int64),
                         "answer": frame["answer"].to_numpy(str)})


def _sample_id(text: str) -> bool:
    """An id as autoal writes it: ASCII digits (int() would take any script's) that fit in int64."""
    return 0 < len(text) <= 19 and text.isascii() and text.isdigit() and int(text) < 2**63


def _read_csv(path: Path, text: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise AutoALError(f"answers file {path} is not a readable CSV: {exc}") from None
    missing = [c for c in ("id", "label") if c not in frame.columns]
    if missing:
        raise AutoALError(f"answers file {path} lacks the column{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(missing)}; expected the queries CSV's columns id,...,label")
    return pd.DataFrame({"id": frame["id"].str.strip(), "answer": frame["label"].str.strip()})


def _read_label_studio(path: Path, text: str) -> pd.DataFrame:
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AutoALError(f"answers file {path} is not valid JSON: {exc}") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise AutoALError(f"answers file {path} is not a Label Studio JSON export (a list of tasks)")
    rows = []
    for number, task in enumerate(tasks, 1):
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        if "autoal_id" not in data:
            raise AutoALError(f"answers file {path}: task {number} has no data.autoal_id; export the "
                              "tasks that autoal wrote (queries/round-NNN.json) from Label Studio")
        try:
            answer = label_studio_answer(task.get("annotations") or [])
        except TypeError as exc:
            raise AutoALError(f"answers file {path}: task {number} is not in Label Studio's export form ({exc})") \
                from None
        rows.append((str(data["autoal_id"]).strip(), answer))
    return pd.DataFrame(rows, columns=["id", "answer"])


def _list_of_dicts(value, what: str) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise TypeError(f"its {what} is a {type(value).__name__}, not a list of objects")
    return value


def label_studio_answer(annotations) -> str:
    """The latest completed annotation's choice; else `skip` if the task was skipped; else ''."""
    annotations = _list_of_dicts(annotations, "annotations")
    for annotation in reversed(annotations):
        if annotation.get("was_cancelled"):
            continue
        for result in _list_of_dicts(annotation.get("result") or [], "result"):
            value = result.get("value") or {}
            choices = value.get("choices") if isinstance(value, dict) else None
            if result.get("type") == "choices" and choices:
                if not isinstance(choices, list):
                    raise TypeError(f"its choices are a {type(choices).__name__}, not a list")
                return str(choices[0]).strip()
    return SKIP if any(a.get("was_cancelled") for a in annotations) else ""


def new_answers(path: Path, answers: pd.DataFrame, queries: pd.DataFrame, answered: pd.DataFrame,
                codes: dict[str, int]) -> pd.DataFrame:
    """(id, label) of the answers in `path` to append: each answers a query, once, with a known label.

    An answer already in the ledger (`answered`) with the same label is passed over, so a
    CSV filled further can be imported again; a changed answer is an error, as is a
    file with nothing new (a round imported twice)."""
    if not len(answers):
        raise AutoALError(f"{path} holds no answers: fill the label column with a class, {SKIP} or {OOD_ANSWER}")
    twice = answers["id"][answers["id"].duplicated()]
    if len(twice):
        raise AutoALError(f"{path} answers id {twice.iloc[0]} more than once")
    unknown = answers[~answers["id"].isin(queries["id"])]
    if len(unknown):
        raise AutoALError(f"{path} answers {len(unknown)} ids that were never queried "
                          f"(e.g. {', '.join(map(str, unknown['id'][:3]))})")
    bad = answers[~answers["answer"].isin(list(codes))]
    if len(bad):
        raise AutoALError(f"{path}: label {shown(bad['answer'].iloc[0])} (id {bad['id'].iloc[0]}) is not one of the "
                          f"classes {', '.join(c for c in codes if c not in (SKIP, OOD_ANSWER))} (or {SKIP}, "
                          f"{OOD_ANSWER}); {len(bad)} such rows")
    answers = answers.assign(label=answers["answer"].map(codes).astype("int64"))
    before = answers.merge(answered[["id", "label"]], on="id", suffixes=("", "_before"))
    changed = before[before["label"] != before["label_before"]]
    if len(changed):
        raise AutoALError(f"{path}: id {changed['id'].iloc[0]} was already answered differently; "
                          "an answer in the ledger is never changed")
    new = answers[~answers["id"].isin(answered["id"])]
    if not len(new):
        rounds = sorted(set(queries[queries["id"].isin(answers["id"])]["round"]))
        raise AutoALError(f"every answer in {path} was already imported (round {', '.join(map(str, rounds))}); "
                          "fill the queries of a newer round")
    return new[["id", "label"]]
