"""Train an embedded model (tiny-sd-digits or tiny-sd-fashion) and its classifier from scratch on 2 CPU cores,
deterministically.

    python -m brevitas_ldm.zoo.train --out brevitas_ldm/zoo/weights                       # tiny-sd-digits
    apt-get install dataset-fashion-mnist                                                  # build-time input only
    python -m brevitas_ldm.zoo.train --model tiny-sd-fashion --data /usr/share/datasets/fashion-mnist

Phases: (1) the classifier, (2) the AutoencoderKL, (3) the text encoder and UNet jointly on pre-encoded latents
with classifier-free-guidance prompt dropout and an EMA of the weights; tiny-sd-fashion then (4) stores the FID
reference statistics of the test split (and the floor / ceiling baselines) next to its classifier, since the data
is not there at run time. The result is written atomically (a temporary folder renamed at the end) as
``<out>/<model>`` (a StableDiffusionPipeline directory), ``<out>/<classifier>`` and the loss curves and wall
times in ``<out>/<log>``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from brevitas_ldm.zoo.architecture import (
    build_scheduler,
    build_text_encoder,
    build_unet,
    build_vae,
)
from brevitas_ldm.zoo.classifier import DigitsClassifier
from brevitas_ldm.zoo.data import augment, load_split
from brevitas_ldm.zoo.fashion_data import DEFAULT_DATA_DIR, fashion_prompts, load_fashion, shift_augment
from brevitas_ldm.zoo.portable_weights import prefix_clip_text_keys
from brevitas_ldm.zoo.tokenizer import digit_prompts, write_tokenizer_files

DEFAULT_OUT = Path(__file__).resolve().parent / "weights"


def _replace_from(staging: Path, out: Path, names) -> None:
    """Move each of ``names`` from ``staging`` into ``out``, replacing what a previous training run left there."""
    for name in names:
        destination = out / name
        if destination.is_dir():
            shutil.rmtree(destination)
        elif destination.exists():
            destination.unlink()
        (staging / name).rename(destination)


def _cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass(frozen=True)
class TrainingTarget:
    """What differs between the embedded models: data, prompts, sizes, default steps and output names."""

    pipeline_dir: str
    classifier_dir: str
    log_name: str
    load: Callable[[Path | None], object]
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    #: Row ``t * 10 + label`` is phrasing ``t`` for class ``label``.
    prompts: Callable[[], list[str]]
    vae_channels: tuple[int, ...] = (16, 32, 32)
    unet: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)
    #: Store the weights in float16 (they load as float32 to the same values) to keep the package small.
    half_storage: bool = False
    fid_reference: bool = False
    #: Cap of the EMA decay (its horizon, ~1 / (1 - decay) steps, should be well short of the run).
    ema_decay: float = 0.999


TARGETS = {
    "tiny-sd-digits": TrainingTarget(
        pipeline_dir="tiny-sd-digits", classifier_dir="digits-classifier", log_name="train_log.json",
        load=lambda _data: load_split(), augment=augment, prompts=digit_prompts,
        defaults={"classifier_steps": 800, "vae_steps": 1200, "unet_steps": 3000, "batch": 64,
                  "augmented_copies": 8}),
    "tiny-sd-fashion": TrainingTarget(
        pipeline_dir="tiny-sd-fashion", classifier_dir="fashion-classifier", log_name="fashion_train_log.json",
        load=lambda data: load_fashion(data or DEFAULT_DATA_DIR), augment=shift_augment, prompts=fashion_prompts,
        # Wider than tiny-sd-digits where it is cheap: the 4x4 and 2x2 levels (2.2x the parameters for 1.3x the
        # compute of a training step).
        unet={"block_out_channels": (48, 96, 160), "attention_head_dim": 8},
        defaults={"classifier_steps": 2000, "vae_steps": 500, "unet_steps": 7000, "batch": 32,
                  "augmented_copies": 0},
        half_storage=True, fid_reference=True, ema_decay=0.995),
}


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, size: int = 500) -> torch.Tensor:
    return torch.cat([fn(chunk) for chunk in x.split(size)])


def train_classifier(split, steps: int, seed: int, log: dict, augment=augment) -> DigitsClassifier:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    n = split.train_images.shape[0]
    losses = []
    for step in tqdm(range(steps), desc="classifier", mininterval=2.0):
        for group in opt.param_groups:
            group["lr"] = _cosine_lr(step, steps, 2e-3, 50)
        idx = torch.randint(0, n, (128,), generator=gen)
        x = augment(split.train_images[idx], gen)
        loss = F.cross_entropy(model(x), split.train_labels[idx], label_smoothing=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        acc = (_batched(model, split.heldout_images).argmax(1) == split.heldout_labels).float().mean().item()
    log["classifier"] = {"steps": steps, "final_loss": sum(losses[-50:]) / 50, "heldout_accuracy": acc,
                         "loss_every_50": losses[::50]}
    tqdm.write(f"classifier held-out accuracy {acc:.4f}")
    return model


def train_vae(split, steps: int, seed: int, log: dict, augment=augment, channels=(16, 32, 32)):
    gen = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed + 1)
    vae = build_vae(channels)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    n = split.train_images.shape[0]
    losses = []
    for step in tqdm(range(steps), desc="vae", mininterval=2.0):
        for group in opt.param_groups:
            group["lr"] = _cosine_lr(step, steps, 1e-3, 100)
        idx = torch.randint(0, n, (32,), generator=gen)
        x = augment(split.train_images[idx], gen).repeat(1, 3, 1, 1)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        rec_loss = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x)
        kl = posterior.kl().mean() / z[0].numel()
        loss = rec_loss + 1e-4 * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(rec_loss.item())
    vae.eval()
    with torch.no_grad():
        x = split.heldout_images.repeat(1, 3, 1, 1)
        recon = _batched(lambda c: vae.decode(vae.encode(c).latent_dist.mode()).sample, x)
        psnr = 10 * math.log10(4.0 / F.mse_loss(recon, x).item())
    log["vae"] = {"steps": steps, "final_recon_loss": sum(losses[-50:]) / 50, "heldout_psnr_db": psnr,
                  "loss_every_50": losses[::50]}
    tqdm.write(f"vae held-out reconstruction PSNR {psnr:.2f} dB")
    return vae


def encode_training_latents(vae, split, copies: int, seed: int, augment=augment) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean plus ``copies`` augmented versions of every training image, as latent means."""
    gen = torch.Generator().manual_seed(seed + 2)
    latents, labels = [], []
    with torch.no_grad():
        for copy_index in range(copies + 1):
            images = split.train_images if copy_index == 0 else augment(split.train_images, gen)
            for chunk in images.split(256):
                latents.append(vae.encode(chunk.repeat(1, 3, 1, 1)).latent_dist.mean)
            labels.append(split.train_labels)
    return torch.cat(latents), torch.cat(labels)


def train_denoiser(vae, tokenizer, latents, labels, steps: int, batch: int, seed: int, log: dict,
                   class_prompts: list[str] | None = None, unet_config: dict | None = None, ema_decay: float = 0.999):
    gen = torch.Generator().manual_seed(seed + 3)
    torch.manual_seed(seed + 3)
    scaling = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling
    vocab = tokenizer.get_vocab()
    text_encoder = build_text_encoder(len(vocab), vocab["<|startoftext|>"], vocab["<|endoftext|>"])
    unet = build_unet(**(unet_config or {}))
    scheduler = build_scheduler()
    # Row t*10+d: template t for class d; the last row is the empty prompt (classifier-free guidance).
    class_prompts = digit_prompts() if class_prompts is None else class_prompts
    num_templates = len(class_prompts) // 10
    prompts = class_prompts + [""]
    token_ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                          return_tensors="pt").input_ids
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=4e-4, weight_decay=1e-4)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    alphas_cumprod = scheduler.alphas_cumprod
    losses = []
    for step in tqdm(range(steps), desc="unet+text", mininterval=2.0):
        lr = _cosine_lr(step, steps, 4e-4, 200)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, latents.shape[0], (batch,), generator=gen)
        x0 = latents[idx]
        template = torch.randint(0, num_templates, (batch,), generator=gen)
        rows = template * 10 + labels[idx]
        drop = torch.rand(batch, generator=gen) < 0.1
        rows = torch.where(drop, torch.full_like(rows, len(prompts) - 1), rows)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        hidden = text_encoder(token_ids[rows]).last_hidden_state
        pred = unet(noisy, t, hidden).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        losses.append(loss.item())
        if step % 100 == 99:
            tqdm.write(f"unet step {step + 1}: loss (last 100) {sum(losses[-100:]) / 100:.4f}")
    log["unet"] = {"steps": steps, "batch": batch, "final_loss": sum(losses[-100:]) / 100,
                   "loss_every_50": losses[::50], "latent_scaling_factor": scaling}
    tqdm.write(f"denoiser final loss {log['unet']['final_loss']:.4f}")
    return ema_unet, ema_text, scheduler


@torch.no_grad()
def fid_reference(classifier: DigitsClassifier, split) -> dict[str, torch.Tensor]:
    """What the evaluator needs from the data once the data is gone: classifier-feature mean and covariance
    (float64) of the held-out (test) images, the FID reference, and of the training images, the floor, and the
    features of the per-class mean training images, the ceiling."""
    def stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = _batched(classifier.features, images).double()
        return feats.mean(0), torch.cov(feats.T)

    mu, sigma = stats(split.heldout_images)
    train_mu, train_sigma = stats(split.train_images)
    means = torch.stack([split.train_images[split.train_labels == d].mean(0) for d in range(10)])
    return {"mu": mu, "sigma": sigma, "train_mu": train_mu, "train_sigma": train_sigma,
            "class_mean_features": classifier.features(means).double(),
            "heldout_count": torch.tensor(len(split.heldout_labels))}


def _round_to_half(*modules: torch.nn.Module) -> None:
    """Round every weight through float16, so the model checked here is the one the half-precision files load."""
    with torch.no_grad():
        for module in modules:
            for tensor in list(module.parameters()) + list(module.buffers()):
                if tensor.is_floating_point():
                    tensor.copy_(tensor.half().float())


def _replace_classifier(out: Path, staging: Path, target: TrainingTarget, log: dict, seconds: float) -> None:
    """Move a retrained classifier into place and record it in the model's training log."""
    log_path = out / target.log_name
    full = json.loads(log_path.read_text()) if log_path.is_file() else {"seed": log["seed"], "args": {}}
    full["classifier"] = log["classifier"]
    full["args"]["classifier_steps"] = log["args"]["classifier_steps"]
    full.setdefault("wall_time_s", {})["classifier"] = seconds
    (staging / target.log_name).write_text(json.dumps(full, indent=1))
    _replace_from(staging, out, (target.classifier_dir, target.log_name))
    print(f"wrote {out / target.classifier_dir} in {seconds:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(TARGETS), default="tiny-sd-digits",
                        help="which embedded model to train")
    parser.add_argument("--data", type=Path, default=None,
                        help=f"tiny-sd-fashion: the folder with Fashion-MNIST's IDX files (default {DEFAULT_DATA_DIR}, "
                             f"where Debian's dataset-fashion-mnist puts them)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder that receives the model folders")
    parser.add_argument("--seed", type=int, default=0)
    # Defaults (None: the model's own, see TARGETS) are the settings of the shipped weights (see docs/model.md).
    parser.add_argument("--classifier-steps", type=int, default=None)
    parser.add_argument("--vae-steps", type=int, default=None)
    parser.add_argument("--unet-steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--augmented-copies", type=int, default=None)
    parser.add_argument("--classifier-only", action="store_true",
                        help="train and write only the classifier (and its FID reference): the judge, retrained "
                             "without touching the model; the other phases never depend on it")
    parser.add_argument("--skip-classifier", action="store_true",
                        help="train and write only the model (the classifier, trained with --classifier-only, "
                             "stays as it is)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is reproducible bit for bit and robust on a busy 2-core machine)")
    args = parser.parse_args(argv)
    target = TARGETS[args.model]
    for key, value in target.defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.skip_classifier and args.classifier_only:
        parser.error("--skip-classifier and --classifier-only exclude each other")
    if args.data is not None and not target.fid_reference:
        parser.error(f"--data applies to tiny-sd-fashion; {args.model} trains on scikit-learn's bundled digits")

    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file
    from transformers import CLIPTokenizer

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    log: dict = {"seed": args.seed, "args": {k: str(v) for k, v in vars(args).items()}}
    if args.model == "tiny-sd-digits":  # the shipped log's keys
        for key in ("model", "data", "classifier_only", "skip_classifier"):
            log["args"].pop(key)
    split = target.load(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".train-", dir=args.out))
    try:
        t0 = time.perf_counter()
        if not args.skip_classifier:
            classifier = train_classifier(split, args.classifier_steps, args.seed, log, target.augment)
            extra = {"heldout_accuracy": log["classifier"]["heldout_accuracy"], "seed": args.seed}
            classifier.save(staging / target.classifier_dir, extra)
            if target.fid_reference:
                save_file({k: v.contiguous() for k, v in fid_reference(classifier, split).items()},
                          str(staging / target.classifier_dir / "fid_reference.safetensors"))
        t1 = time.perf_counter()
        if args.classifier_only:
            _replace_classifier(args.out, staging, target, log, t1 - t0)
            return
        vae = train_vae(split, args.vae_steps, args.seed, log, target.augment, target.vae_channels)
        t2 = time.perf_counter()
        write_tokenizer_files(staging / "tokenizer-src", target.prompts())
        tokenizer = CLIPTokenizer.from_pretrained(str(staging / "tokenizer-src"))
        latents, labels = encode_training_latents(vae, split, args.augmented_copies, args.seed, target.augment)
        unet, text_encoder, scheduler = train_denoiser(vae, tokenizer, latents, labels, args.unet_steps,
                                                       args.batch, args.seed, log, target.prompts(), target.unet,
                                                       target.ema_decay)
        t3 = time.perf_counter()
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        if target.half_storage:
            _round_to_half(vae, text_encoder, unet)
            pipe.to(torch.float16)
        pipe.save_pretrained(str(staging / target.pipeline_dir), safe_serialization=True)
        prefix_clip_text_keys(staging / target.pipeline_dir / "text_encoder")     # loadable by older transformers
        # Ship the project's own tokenizer files (vocab.json, merges.txt) rather than only a tokenizer.json.
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(staging / "tokenizer-src" / name, staging / target.pipeline_dir / "tokenizer" / name)
        shutil.rmtree(staging / "tokenizer-src")
        log["wall_time_s"] = {"classifier": t1 - t0, "vae": t2 - t1, "unet": t3 - t2, "total": t3 - t0}
        if target.fid_reference:
            log["parameters"] = {name: sum(p.numel() for p in module.parameters())
                                 for name, module in (("vae", vae), ("text_encoder", text_encoder), ("unet", unet))}
        (staging / target.log_name).write_text(json.dumps(log, indent=1))
        written = [target.pipeline_dir, target.log_name] + ([] if args.skip_classifier else [target.classifier_dir])
        _replace_from(staging, args.out, written)
        print(f"wrote {args.out / target.pipeline_dir} in {t3 - t0:.0f} s")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


if __name__ == "__main__":
    main()
