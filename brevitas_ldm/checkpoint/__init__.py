"""A quantized pipeline on disk and back: the folder format (:mod:`.folder`: integer codes, the
``quantization_config``, hashes), the reload calls (:mod:`.pretrained`), and the ``"brevitas"`` diffusers backend
that lets ``DiffusionPipeline.from_pretrained`` load such folders (:mod:`.diffusers_quantizer`, installed by
:mod:`.diffusers_registration` on ``import brevitas_ldm``). This file imports nothing: ``import brevitas_ldm``
registers the backend without importing torch."""
