"""Layer categories: what a diffusers layer does, read from its user-facing name.

The local analysis groups its figures by category, and calibration needs one category in particular: the
timestep/class-embedding projections, whose input depends on the timestep only, never on the latent or the prompt.
"""

from __future__ import annotations

CATEGORIES = ("attn_q", "attn_k", "attn_v", "attn_out", "transformer_io", "feed_forward", "resnet_conv",
              "shortcut_conv", "sampler", "time_embedding", "in_out", "other")
CATEGORY_LABELS = {
    "attn_q": "attention query", "attn_k": "attention key", "attn_v": "attention value",
    "attn_out": "attention output", "transformer_io": "transformer proj_in/proj_out",
    "feed_forward": "feed-forward", "resnet_conv": "resnet conv", "shortcut_conv": "shortcut conv",
    "sampler": "up/down sampler", "time_embedding": "time-embedding projection", "in_out": "input/output conv",
    "other": "other"}


def layer_category(name: str) -> str:
    """Category of a diffusers layer from its user-facing qualified name.

    Time-embedding projections include the resnets' ``time_emb_proj`` and, for DiTs, the adaLN projections of the
    timestep/class embedding (``norm1.linear``, ``timestep_embedder``), which all only see the conditioning vector.
    """
    parts = name.split(".")
    last = parts[-1]
    tail2 = ".".join(parts[-2:])
    if last in ("to_q", "add_q_proj", "query", "q_proj"):
        return "attn_q"
    if last in ("to_k", "add_k_proj", "key", "k_proj"):
        return "attn_k"
    if last in ("to_v", "add_v_proj", "value", "v_proj"):
        return "attn_v"
    if tail2 in ("to_out.0", "to_add_out") or last in ("to_add_out", "proj_attn", "out_proj"):
        return "attn_out"
    if "ff" in parts or "ff_context" in parts or "feed_forward" in parts:
        return "feed_forward"
    if last == "conv_shortcut":
        return "shortcut_conv"
    if "downsamplers" in parts or "upsamplers" in parts:
        return "sampler"
    if (last == "time_emb_proj" or parts[0] in ("time_embedding", "time_embed", "time_text_embed", "adaln_single",
                                                  "class_embedding", "add_embedding")
            or "timestep_embedder" in parts or "emb" in parts
            or (len(parts) >= 2 and parts[-2].startswith("norm") and last == "linear")):
        return "time_embedding"
    if "resnets" in parts and last.startswith("conv"):
        return "resnet_conv"
    if "attentions" in parts and last in ("proj_in", "proj_out"):
        return "transformer_io"
    if len(parts) <= 2 and (parts[0] in ("conv_in", "conv_out", "proj_out", "proj_out_1", "proj_out_2", "proj_in",
                                          "x_embedder", "context_embedder") or parts[0] == "pos_embed"):
        return "in_out"
    return "other"
