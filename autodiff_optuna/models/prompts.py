"""Prompts of a text-to-image model: ``--prompts FILE``, plain text or COCO's ``captions_*.json``.

- Plain text: one prompt a line; blank lines are skipped, surrounding whitespace is dropped.
- COCO captions (``annotations/captions_val2014.json`` of MS-COCO's annotation zip): a JSON
  object whose ``annotations`` list holds ``{"image_id": ..., "id": ..., "caption": ...}``; the
  captions are taken in the file's order (five or so per image).

A sample's prompt is its index into this list (``sampling.noise.draw`` draws it from the seed), so
the list's order is part of what a study searched on: the model's fingerprint records a digest of
the list. A wrong file (missing, binary, not UTF-8, larger than COCO's largest captions file,
JSON that is not COCO's, no prompt at all) is one ``UsageError`` line.
"""

import hashlib
import json
from pathlib import Path

from autodiff_optuna.errors import UsageError
from autodiff_optuna.models.files import RemoteFile, read_text, resolve

# captions_train2014.json is 66 MB; anything past this is not a prompts file (/dev/zero, an image
# folder's tarball), refused before it is read whole
MAX_PROMPTS_BYTES = 256 << 20

COCO_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2014.zip"
# the default prompts of the Stable Diffusion presets: MS-COCO 2014 validation captions
COCO_CAPTIONS = RemoteFile(
    "captions_val2014.json", COCO_ANNOTATIONS_URL, flag="--prompts",
    what="MS-COCO 2014 validation captions, annotations/captions_val2014.json in the zip")


def resolve_prompts(override: str | None = None, default: RemoteFile | None = COCO_CAPTIONS
                    ) -> Path:
    """The prompts file: ``--prompts`` where given, else ``default`` in the models directories;
    missing is one line naming the file, where it is published and where to put it."""
    if override is None and default is None:
        raise UsageError("this model needs prompts: pass --prompts FILE (one prompt a line, or "
                         "COCO's captions_*.json)")
    try:
        return resolve(default or COCO_CAPTIONS, override)
    except UsageError as err:
        if override is None:
            raise
        raise UsageError(f"{err} (prompts: one a line, or MS-COCO's captions_*.json from "
                         f"{COCO_ANNOTATIONS_URL})") from None


def read_prompts(path) -> list[str]:
    """The prompts of a plain-text or COCO captions file, in the file's order."""
    text = read_text(path, MAX_PROMPTS_BYTES, what="prompts")
    stripped = text.lstrip()
    if Path(path).suffix.lower() == ".json" or stripped.startswith("{"):
        prompts = _coco_captions(path, stripped)
    else:
        prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise UsageError(f"{path} holds no prompts (one a line, or COCO's captions_*.json)")
    return prompts


def prompts_digest(prompts: list[str]) -> str:
    """A short SHA-256 of the prompt list itself: the same captions from a .txt or a .json are
    the same samples; another order is not."""
    return hashlib.sha256(json.dumps(prompts, ensure_ascii=False).encode()).hexdigest()[:12]


def _coco_captions(path, text: str) -> list[str]:
    try:
        data = json.loads(text)
    except ValueError as err:
        raise UsageError(f"prompts {path} is not valid JSON: {err}") from None
    except RecursionError:
        raise UsageError(f"prompts {path} is not JSON this program reads: nested too deeply"
                         ) from None
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise UsageError(f"prompts {path} is JSON but not COCO captions: it needs an "
                         "'annotations' list of {\"caption\": ...} objects")
    captions = []
    for i, item in enumerate(annotations):
        caption = item.get("caption") if isinstance(item, dict) else None
        if not isinstance(caption, str):
            raise UsageError(f"prompts {path}: annotation {i} has no 'caption' string")
        captions.append(caption.strip())
    return captions
