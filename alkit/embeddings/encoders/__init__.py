"""Patch encoders behind one small interface (:class:`Encoder`), built by name with :func:`get_encoder`.

Built-in specs:

- ``handcrafted`` (default): colour-deconvolution, nuclear-density and texture statistics; offline.
- ``resnet18[@none|@imagenet|@PATH]``: torchvision ResNet-18 backbone (512-d), e.g. Ciga et al.'s
  self-supervised histopathology checkpoint at ``resnet18@/models/tenpercent_resnet18.ckpt``.
- ``open_clip:ARCH[@TAG|@PATH]`` / ``open_clip:hf-hub:ORG/NAME``: any OpenCLIP model, image and text.
- ``plip[@DIR]``: PLIP (``vinid/plip``), a Hugging Face CLIP model; needs ``pip install 'alkit[plip]'``.

Heavy libraries (torchvision, open_clip, transformers) are imported only when an encoder needs them.
"""

from alkit.embeddings.encoders.base import Encoder, EncoderError, l2_normalise
from alkit.embeddings.encoders.registry import available_encoders, get_encoder, parse_spec, register_encoder

# importing the modules registers their factories
from alkit.embeddings.encoders import handcrafted, openclip, plip, resnet  # noqa: E402,F401  isort: skip

DEFAULT_ENCODER = "handcrafted"

__all__ = ["DEFAULT_ENCODER", "Encoder", "EncoderError", "available_encoders", "get_encoder", "l2_normalise",
           "parse_spec", "register_encoder"]
