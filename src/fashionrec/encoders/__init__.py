"""Encoders: images -> L2-normalised float32 vectors, and the id that names exactly what made them.

Every encoder has an id (name, weights hash, preprocessing) that the index records: vectors of
different encoders never end up in one index. The modules, each building only on those before it:

    spec       EncoderSpec, EncoderError, Backbone, defaults (no torch, no ONNX Runtime)
    weights    weights files: located, downloaded once, hashed
    registry   BACKBONES: each encoder name, its weights and how it is fed
    runtimes   Encoder; ONNX Runtime (OpenVINO for full batches) / torch runners; the ONNX export
    backbones  the torch nets (imported only to export or for the torch backend)
    adapter    the trained adapter's torch nets (likewise)
    int8       NAME:int8, the ONNX model quantised to int8, calibrated on a catalog's photos
    trained    a model directory made by `fashionrec train`, opened as one encoder (no torch)
    loader     load_encoder, encoder_for_index

Searching with a cached ONNX file imports neither torch nor any training code.
"""

from fashionrec.encoders.loader import encoder_for_index, load_encoder
from fashionrec.encoders.registry import BACKBONES
from fashionrec.encoders.runtimes import Encoder
from fashionrec.encoders.spec import (
    DEFAULT_ENCODER,
    DEFAULT_FIT,
    TRAINED_MANIFEST,
    Backbone,
    EncoderError,
    EncoderSpec,
)
from fashionrec.encoders.weights import WEIGHTS_ENV

__all__ = [
    "BACKBONES",
    "DEFAULT_ENCODER",
    "DEFAULT_FIT",
    "TRAINED_MANIFEST",
    "WEIGHTS_ENV",
    "Backbone",
    "Encoder",
    "EncoderError",
    "EncoderSpec",
    "encoder_for_index",
    "load_encoder",
]
