"""Label Studio's ML backend protocol as data: what its requests carry, what autoal answers.

Label Studio (its `ml` app) calls GET /health, POST /setup ({"project", "schema", ...}: answered
with {"model_version"}), POST /predict ({"tasks": [...], "project", "label_config", ...}: answered
with {"results": [...]}, one prediction per task in the tasks' order, each {"result", "score",
"model_version"}) and, for the webhook autoal registers, POST /webhook ({"action", "annotation",
"task", ...}). These are pure functions of the parsed JSON, so the shapes are tested without a
server. A request that breaks them is one AutoALError line, which the server answers with a 4xx.

A task is a pool sample by its `data.autoal_id` (the tasks `autoal label next` writes), else by the
name of its image file: Label Studio stores an upload as `<8 hex>-<name>`, so `digit0007.png`
uploaded is `/data/upload/3/5f0e9a1c-digit0007.png`, which is the pool's `digit0007.png`; else by the
name autoal gave the image when it fetched it from Label Studio (`fetched_name`, autoal.studio.fetch).

Scores follow Label Studio's meaning of a prediction's score, the model's confidence: its
Data Manager sorts tasks by it ascending to show the least confident first, and its uncertainty
sampling serves the lowest first. autoal's score is the task's place in the strategy's order,
(rank + 1) / n over the unlabeled tasks, so ascending is the strategy's order; answered tasks score
1. A batch strategy (badge, coreset, typiclust, autoal) picks a batch rather than scoring each
sample: its batch takes the lowest scores in pick order, the rest follow by the model's
uncertainty.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from xml.etree import ElementTree
from urllib.parse import unquote, urlsplit

import numpy as np

from autoal.errors import AutoALError
from autoal.labeling import files as label_files
from autoal.safe_io import shown

BODY_BYTES = 16 << 20     # a /predict of a few thousand tasks with URLs; a webhook is kilobytes
MAX_TASKS = 10_000        # tasks in one /predict (Label Studio sends pages of at most a few hundred)
UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")   # Label Studio's prefix of an uploaded file's name
ANSWER_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
DELETE_ACTION = "ANNOTATIONS_DELETED"


class TooLarge(AutoALError):
    """A request body over BODY_BYTES (HTTP 413)."""


def parse_body(raw: bytes) -> dict:
    """A request's JSON object; anything else (too big, not JSON, too deep, not an object) is an error."""
    if len(raw) > BODY_BYTES:
        raise TooLarge(f"request body of {len(raw)} bytes exceeds {BODY_BYTES}")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:   # UnicodeDecodeError is a ValueError
        raise AutoALError(f"request body is not JSON ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise AutoALError(f"request body is a JSON {type(body).__name__}, not an object")
    return body


def project_key(body: dict) -> str:
    """Label Studio's project id ("<id>.<created timestamp>" in /predict and /setup, a dict in webhooks)."""
    project = body.get("project")
    if isinstance(project, dict):
        project = project.get("id")
    return str(project) if isinstance(project, (str, int)) else ""


class TaskIndex:
    """Which pool sample a Label Studio task shows: by `data.autoal_id`, else by its image's file name
    (names that two pool files share match neither)."""

    def __init__(self, ids: np.ndarray, sources: np.ndarray):
        self.ids = {int(i) for i in ids}
        names: dict[str, int | None] = {}
        for i, source in zip(ids, sources):
            if source:
                name = PurePosixPath(str(source)).name
                names[name] = None if name in names else int(i)
        self.names = {n: i for n, i in names.items() if i is not None}

    def pool_id(self, task, key: str = label_files.OBJECT) -> int | None:
        """The pool id of `task`, whose image is `data[key]` (None: not a sample of the pool)."""
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            return None
        tagged = data.get("autoal_id")
        if tagged is not None:
            text = str(tagged).strip()
            return int(text) if text.isascii() and text.isdigit() and int(text) in self.ids else None
        image = data.get(key)
        if not isinstance(image, str) or image.startswith("data:"):
            return None
        name = PurePosixPath(unquote(urlsplit(image).path)).name
        for candidate in (name, UPLOAD_PREFIX.sub("", name, count=1), fetched_name(image)):
            if candidate in self.names:
                return self.names[candidate]
        return None


def fetched_name(image: str) -> str:
    """The file name of a task's image that autoal fetched from Label Studio into the pool's folder:
    named for the task's image reference, so the same task finds the same file after a restart."""
    return f"label-studio-{hashlib.sha256(image.encode()).hexdigest()[:16]}.png"


def predict_tasks(body: dict) -> list:
    tasks = body.get("tasks")
    if not isinstance(tasks, list):
        raise AutoALError("/predict needs a JSON object with a list of tasks under 'tasks'")
    if len(tasks) > MAX_TASKS:
        raise AutoALError(f"/predict got {len(tasks)} tasks; at most {MAX_TASKS} at a time")
    return tasks


@dataclass(frozen=True)
class Schema:
    """What autoal needs of a Label Studio labeling config: the <Choices> to predict into, the <Image>
    it labels, and the task data key of that image (`$image`)."""

    control: str = label_files.CONTROL
    image: str = label_files.OBJECT
    key: str = label_files.OBJECT


def schema(label_config, classes: tuple[str, ...]) -> Schema:
    """The config's first <Image> and the <Choices> that labels it, checked to offer every class
    (a config not given, as in some webhooks, is autoal's own: `queries/label-studio.xml`)."""
    if not isinstance(label_config, str) or not label_config.strip():
        return Schema()
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError as exc:
        raise AutoALError(f"the labeling config is not XML ({exc})") from None
    image = next((e for e in root.iter("Image") if e.get("name") and e.get("value")), None)
    choices = image is not None and next((e for e in root.iter("Choices") if e.get("toName") == image.get("name")),
                                         None)
    if choices is None or choices is False:
        raise AutoALError("the labeling config has no <Image> with <Choices> for it; autoal predicts an image's class")
    offered = tuple(c.get("value", "") for c in choices.iter("Choice"))
    missing = [c for c in classes if c not in offered]
    if missing:
        raise AutoALError(f"the labeling config's <Choices name={shown(choices.get('name'))}> lacks the project's "
                          f"classes {', '.join(missing[:5])}; use autoal's config, queries/label-studio.xml")
    return Schema(choices.get("name"), image.get("name"), image.get("value").lstrip("$"))


def prediction(predicted: str, score: float, version: str, schema: Schema = Schema()) -> dict:
    """One task's prediction: the model's class as a pre-annotation of the config's choices (none
    before a model exists), the score that orders the Data Manager, and the round's model version."""
    result = [{"from_name": schema.control, "to_name": schema.image, "type": "choices",
               "value": {"choices": [predicted]}}] if predicted else []
    return {"result": result, "score": float(score), "model_version": version}


def ranked_scores(ranking: np.ndarray) -> np.ndarray:
    """Scores of the unlabeled ids in `ranking` (most informative first): (rank + 1) / n."""
    return (np.arange(len(ranking)) + 1) / max(len(ranking), 1)


def webhook_event(body: dict) -> tuple[str, list[tuple[int, dict]]]:
    """(action, [(Label Studio annotation id, payload)]): for ANNOTATION_CREATED and _UPDATED the
    annotation and its task, for ANNOTATIONS_DELETED the deleted annotations' ids; other actions
    (projects, tasks, START_TRAINING) carry nothing to store."""
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise AutoALError("webhook body has no 'action'")
    if action in ANSWER_ACTIONS:
        annotation, task = body.get("annotation"), body.get("task")
        if not isinstance(annotation, dict) or not isinstance(task, dict):
            raise AutoALError(f"webhook {shown(action)} lacks its 'annotation' or 'task' object")
        number = annotation.get("id")
        if not isinstance(number, int):
            raise AutoALError(f"webhook {shown(action)}: the annotation has no integer 'id'")
        return action, [(number, dict(annotation=annotation, task=task))]
    if action == DELETE_ACTION:
        deleted = body.get("annotations")
        if not isinstance(deleted, list) or not all(isinstance(a, dict) and isinstance(a.get("id"), int)
                                                    for a in deleted):
            raise AutoALError("webhook ANNOTATIONS_DELETED needs a list of annotations with integer ids")
        return action, [(a["id"], {}) for a in deleted]
    return action, []


def answer_of(annotation: dict) -> str:
    """The class (or skip) a person gave in one annotation; '' when it holds no choice."""
    try:
        return label_files.label_studio_answer([annotation])
    except TypeError as exc:
        raise AutoALError(f"webhook annotation is not in Label Studio's form ({exc})") from None
