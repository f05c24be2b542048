"""WINGS modeling: LoRRA learners, routers, the decoder-layer wrapper, learner cache, vision side, model."""

from .cache import WingsCache, WingsStaticCache
from .decoder_layer import WingsDecoderLayer
from .lorra import LoRRA
from .model import WingsForConditionalGeneration, WingsPreTrainedModel
from .router import PositionalRouter, SegmentRouter

__all__ = [
    "LoRRA",
    "PositionalRouter",
    "SegmentRouter",
    "WingsCache",
    "WingsStaticCache",
    "WingsDecoderLayer",
    "WingsForConditionalGeneration",
    "WingsPreTrainedModel",
]
