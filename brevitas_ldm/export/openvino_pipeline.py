"""A whole OpenVINO pipeline folder that optimum-intel loads: ``OVDiffusionPipeline.from_pretrained(folder)``.

``brevitas-ldm export --format openvino --pipeline`` writes it beside the denoiser file. The layout is the one
optimum-intel 2.2 writes itself (``OVStableDiffusionPipeline.save_pretrained``) and reads back:

* ``model_index.json``: the source pipeline's own (``_class_name`` ``StableDiffusionPipeline``; optimum-intel maps
  it to its OpenVINO twin);
* ``unet/openvino_model.xml`` + ``.bin``: the quantized denoiser, the very IR ``--format openvino`` verified and
  counted (integer kernels), with its output named ``out_sample`` as optimum-intel's exports name it;
* ``text_encoder/``, ``vae_decoder/``, ``vae_encoder/``: the float components converted by ``openvino.convert_model``
  at f32, with the input and output names optimum-intel's parts feed and read (``input_ids`` ->
  ``last_hidden_state``, ``pooler_output``; ``latent_sample`` -> ``sample``; ``sample`` -> ``latent_parameters``),
  dynamic in batch and size, each with its ``config.json``;
* ``tokenizer/``, ``scheduler/``: saved by their own ``save_pretrained``.

Only the OpenVINO runtime is needed to write it; loading it takes optimum-intel, whose 2.2 release pins transformers
below 5.6 (``tox -e pipeline`` runs the loading test in such an environment).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from brevitas_ldm.errors import BrevitasLDMError

#: The file name optimum-intel looks for in every component folder.
OV_MODEL_FILE = "openvino_model.xml"
#: Pipelines whose OpenVINO folder this module writes (optimum-intel's ``OVStableDiffusionPipeline``).
PIPELINE_CLASSES = ("StableDiffusionPipeline",)
#: The output name optimum-intel's UNet exports carry.
UNET_OUTPUT = "out_sample"


def check_pipeline_class(class_name: str) -> None:
    """Refuse ``--pipeline`` for a pipeline this module does not lay out (before the model is loaded)."""
    if class_name not in PIPELINE_CLASSES:
        raise BrevitasLDMError(f"--pipeline writes optimum-intel's OVStableDiffusionPipeline folder, for "
                               f"{', '.join(PIPELINE_CLASSES)} only, not {class_name}: drop --pipeline and load "
                               f"denoiser.xml into your own OpenVINO pipeline")


class _TextEncoder(nn.Module):
    """CLIPTextModel as optimum-intel's text-encoder part calls it: token ids in, hidden states and pooled out.

    The forward is CLIPTextTransformer's, with the causal mask built here as an additive float mask: transformers 5.5
    (the newest optimum-intel 2.2 allows) cannot trace its own ``create_causal_mask`` (it takes the traced length
    for a deprecated cache-position argument and fails), and 5.2x traces it to the same mask."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        # transformers 5.2x flattened CLIPTextModel into its transformer; earlier releases keep it under text_model
        self.text_model = getattr(text_encoder, "text_model", text_encoder)
        self.eos_token_id = text_encoder.config.eos_token_id

    def forward(self, input_ids: torch.Tensor):
        hidden = self.text_model.embeddings(input_ids=input_ids)
        length = input_ids.shape[1]
        blocked = torch.ones(length, length, dtype=torch.bool, device=hidden.device).triu(1)
        mask = torch.zeros(length, length, dtype=hidden.dtype, device=hidden.device).masked_fill(
            blocked, torch.finfo(hidden.dtype).min)[None, None]
        hidden = self.text_model.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state
        hidden = self.text_model.final_layer_norm(hidden)
        ids = input_ids.to(torch.int32)
        # CLIP's pooling: the end-of-text position (the highest id under the legacy eos_token_id 2)
        eos = ids.argmax(dim=-1) if self.eos_token_id == 2 else (ids == self.eos_token_id).int().argmax(dim=-1)
        return hidden, hidden[torch.arange(hidden.shape[0], device=hidden.device), eos]


class _VaeDecoder(nn.Module):
    """AutoencoderKL's decoder: scaled latents in, image out."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor):
        return self.vae.decode(latent_sample, return_dict=False)[0]


class _VaeEncoder(nn.Module):
    """AutoencoderKL's encoder: image in, the latent distribution's parameters (mean and log-variance) out."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, sample: torch.Tensor):
        return self.vae.encode(sample, return_dict=False)[0].parameters


def _convert(module: nn.Module, example: torch.Tensor, input_name: str, output_names: tuple[str, ...],
             dynamic: list[int], path: Path) -> Path:
    """``module`` as an f32 OpenVINO IR with named ports, dynamic in ``dynamic``'s axes (-1) of its one input."""
    import openvino

    shape = [-1 if axis in dynamic else size for axis, size in enumerate(example.shape)]
    dtype = openvino.Type.i64 if example.dtype == torch.int64 else openvino.Type.f32
    with torch.no_grad():
        model = openvino.convert_model(module.eval(), example_input=(example,),
                                       input=[(openvino.PartialShape(shape), dtype)])
    model.inputs[0].get_tensor().set_names({input_name})
    for port, name in zip(model.outputs, output_names):
        port.get_tensor().set_names({name})
    path.parent.mkdir(parents=True, exist_ok=True)
    openvino.save_model(model, str(path), compress_to_fp16=False)
    return path


def write_openvino_pipeline(pipe: Any, denoiser_xml: Path, folder: Path) -> dict[str, int]:
    """Write ``folder`` (see the module docstring) from ``pipe`` (a loaded ``StableDiffusionPipeline`` whose denoiser
    ``denoiser_xml`` holds); returns each component's IR size in bytes (``.xml`` + ``.bin``)."""
    import openvino

    from brevitas_ldm.export.openvino_ir import ir_size_bytes

    check_pipeline_class(type(pipe).__name__)
    folder.mkdir(parents=True, exist_ok=True)
    unet = openvino.Core().read_model(str(denoiser_xml))
    unet.outputs[0].get_tensor().set_names({UNET_OUTPUT})
    paths = {"unet": folder / "unet" / OV_MODEL_FILE}
    paths["unet"].parent.mkdir()
    openvino.save_model(unet, str(paths["unet"]), compress_to_fp16=False)
    pipe.unet.save_config(folder / "unet")

    max_length = pipe.tokenizer.model_max_length
    ids = pipe.tokenizer(["a"], padding="max_length", max_length=max_length, return_tensors="pt").input_ids
    paths["text_encoder"] = _convert(_TextEncoder(pipe.text_encoder), ids, "input_ids",
                                     ("last_hidden_state", "pooler_output"), [0, 1],
                                     folder / "text_encoder" / OV_MODEL_FILE)
    pipe.text_encoder.config.save_pretrained(folder / "text_encoder")

    vae = pipe.vae
    size = pipe.unet.config.sample_size
    latent = torch.zeros(1, vae.config.latent_channels, size, size)
    image = torch.zeros(1, vae.config.in_channels, size * pipe.vae_scale_factor, size * pipe.vae_scale_factor)
    paths["vae_decoder"] = _convert(_VaeDecoder(vae), latent, "latent_sample", ("sample",), [0, 2, 3],
                                    folder / "vae_decoder" / OV_MODEL_FILE)
    paths["vae_encoder"] = _convert(_VaeEncoder(vae), image, "sample", ("latent_parameters",), [0, 2, 3],
                                    folder / "vae_encoder" / OV_MODEL_FILE)
    for name in ("vae_decoder", "vae_encoder"):
        vae.save_config(folder / name)

    pipe.tokenizer.save_pretrained(folder / "tokenizer")
    pipe.scheduler.save_pretrained(folder / "scheduler")
    pipe.save_config(folder)      # model_index.json: the source pipeline's classes, as optimum-intel writes it
    return {name: ir_size_bytes(path) for name, path in paths.items()}
