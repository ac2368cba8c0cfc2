"""A diffusers folder written back as one original-layout `.safetensors` checkpoint, the way the SD 1.x
and SDXL releases (and the checkpoints people share) are laid out: `model.diffusion_model.*` for the
UNet, `first_stage_model.*` for the VAE, `cond_stage_model.*` or `conditioner.embedders.*` for the text
encoders (SDXL's second one in OpenCLIP's own names). Written for the tiny test pipelines, so that a
single file is loaded through the bot's loader exactly as a downloaded one would be."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    assert len(files) == 1, f"{folder}: expected one weights file, found {files}"
    return load_file(str(files[0]))


def _unet_prefixes(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(diffusers prefix, original prefix) for every block of a UNet with this config."""
    layers, levels = config["layers_per_block"], len(config["block_out_channels"])
    pairs = [
        ("time_embedding.linear_1", "time_embed.0"),
        ("time_embedding.linear_2", "time_embed.2"),
        ("add_embedding.linear_1", "label_emb.0.0"),
        ("add_embedding.linear_2", "label_emb.0.2"),
        ("conv_in", "input_blocks.0.0"),
        ("conv_norm_out", "out.0"),
        ("conv_out", "out.2"),
        ("mid_block.resnets.0", "middle_block.0"),
        ("mid_block.attentions.0", "middle_block.1"),
        ("mid_block.resnets.1", "middle_block.2"),
    ]
    for level in range(levels):
        for j in range(layers):
            i = 1 + level * (layers + 1) + j
            pairs += [(f"down_blocks.{level}.resnets.{j}", f"input_blocks.{i}.0")]
            pairs += [(f"down_blocks.{level}.attentions.{j}", f"input_blocks.{i}.1")]
        if level < levels - 1:
            pairs += [
                (
                    f"down_blocks.{level}.downsamplers.0.conv",
                    f"input_blocks.{1 + level * (layers + 1) + layers}.0.op",
                )
            ]
        up_attention = "CrossAttn" in config["up_block_types"][level]
        for j in range(layers + 1):
            i = level * (layers + 1) + j
            pairs += [(f"up_blocks.{level}.resnets.{j}", f"output_blocks.{i}.0")]
            pairs += [(f"up_blocks.{level}.attentions.{j}", f"output_blocks.{i}.1")]
        if level < levels - 1:
            last = level * (layers + 1) + layers
            pairs += [
                (
                    f"up_blocks.{level}.upsamplers.0.conv",
                    f"output_blocks.{last}.{2 if up_attention else 1}.conv",
                )
            ]
    return pairs


def _rename(key: str, pairs: list[tuple[str, str]], inner: dict[str, str]) -> str:
    for new, old in pairs:
        if key.startswith(new + "."):
            rest = key[len(new) + 1 :]
            if ".resnets." in new or new.startswith("mid_block.resnets"):
                for a, b in inner.items():
                    if rest.startswith(a + "."):
                        rest = b + rest[len(a) :]
                        break
            return f"{old}.{rest}"
    raise AssertionError(f"no original name for {key}")


def _vae(weights: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    levels = len(config["block_out_channels"])
    out = {}
    for key, tensor in weights.items():
        name = key.replace("conv_norm_out", "norm_out")
        for part in ("encoder", "decoder"):
            name = name.replace(f"{part}.mid_block.resnets.0", f"{part}.mid.block_1")
            name = name.replace(f"{part}.mid_block.resnets.1", f"{part}.mid.block_2")
        if ".mid_block.attentions.0." in name:
            name = name.replace(".mid_block.attentions.0.", ".mid.attn_1.")
            for a, b in VAE_ATTENTION.items():
                name = name.replace(f".attn_1.{a}.", f".attn_1.{b}.")
            if tensor.ndim == 2:  # the original's attention is 1x1 convolutions
                tensor = tensor[:, :, None, None]
        parts = name.split(".")
        if parts[1] == "down_blocks":
            kind = "block" if parts[3] == "resnets" else "downsample"
            rest = parts[4:] if kind == "block" else parts[5:]
            name = ".".join([parts[0], "down", parts[2], kind, *rest])
        elif parts[1] == "up_blocks":
            kind = "block" if parts[3] == "resnets" else "upsample"
            rest = parts[4:] if kind == "block" else parts[5:]
            name = ".".join([parts[0], "up", str(levels - 1 - int(parts[2])), kind, *rest])
        out["first_stage_model." + name.replace("conv_shortcut", "nin_shortcut")] = tensor
    return out


def _open_clip(weights: dict[str, Any], prefix: str) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    layers: dict[int, dict[str, Any]] = {}
    for key, tensor in weights.items():
        if key == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = tensor
        elif key == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = tensor
        elif key.startswith("text_model.final_layer_norm."):
            out["ln_final." + key.rsplit(".", 1)[1]] = tensor
        elif key == "text_projection.weight":
            out["text_projection"] = tensor.T.contiguous()
        elif key.startswith("text_model.encoder.layers."):
            index, rest = key[len("text_model.encoder.layers.") :].split(".", 1)
            layers.setdefault(int(index), {})[rest] = tensor
    for i, layer in layers.items():
        base = f"transformer.resblocks.{i}."
        for a, b in (
            ("layer_norm1", "ln_1"),
            ("layer_norm2", "ln_2"),
            ("mlp.fc1", "mlp.c_fc"),
            ("mlp.fc2", "mlp.c_proj"),
            ("self_attn.out_proj", "attn.out_proj"),
        ):
            for kind in ("weight", "bias"):
                out[f"{base}{b}.{kind}"] = layer[f"{a}.{kind}"]
        for kind in ("weight", "bias"):
            qkv = [layer[f"self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{base}attn.in_proj_{kind}"] = torch.cat(qkv, dim=0)
    return {prefix + k: v for k, v in out.items()}


def to_single_file(folder: Path, out: Path) -> Path:
    """Write the diffusers folder `folder` (SD 1.x or SDXL) as one original-layout checkpoint."""
    from safetensors.torch import save_file

    index = json.loads((folder / "model_index.json").read_text())
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    pairs = _unet_prefixes(unet_config)
    state = {
        f"model.diffusion_model.{_rename(k, pairs, RESNET)}": v for k, v in _weights(folder / "unet").items()
    }
    state.update(_vae(_weights(folder / "vae"), vae_config))
    # The original layout names CLIP's tensors as transformers used to (text_model.*); newer releases save
    # CLIPTextModel without that level.
    text = {
        k if k.startswith("text_model.") else f"text_model.{k}": v
        for k, v in _weights(folder / "text_encoder").items()
    }
    if "XL" in index["_class_name"]:
        state.update({f"conditioner.embedders.0.transformer.{k}": v for k, v in text.items()})
        state.update(_open_clip(_weights(folder / "text_encoder_2"), "conditioner.embedders.1.model."))
    else:
        state.update({f"cond_stage_model.transformer.{k}": v for k, v in text.items()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    return out
