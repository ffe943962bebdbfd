"""Train tiny-sd-digits and its digits classifier from scratch, on 2 CPU cores, deterministically.

    python -m brevitas_ldm.zoo.train --out brevitas_ldm/zoo/weights

Phases: (1) the digits classifier, (2) the AutoencoderKL, (3) the text encoder and UNet jointly on pre-encoded
latents with classifier-free-guidance prompt dropout and an EMA of the weights. The result is written atomically
(a temporary folder renamed at the end) as ``<out>/tiny-sd-digits`` (a StableDiffusionPipeline directory) and
``<out>/digits-classifier``, with ``<out>/train_log.json`` holding the loss curves and wall times.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import tempfile
import time
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
from brevitas_ldm.zoo.data import DIGIT_NAMES, PROMPT_TEMPLATES, augment, load_split
from brevitas_ldm.zoo.tokenizer import write_tokenizer_files

DEFAULT_OUT = Path(__file__).resolve().parent / "weights"


def _cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_classifier(split, steps: int, seed: int, log: dict) -> DigitsClassifier:
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
        acc = (model(split.heldout_images).argmax(1) == split.heldout_labels).float().mean().item()
    log["classifier"] = {"steps": steps, "final_loss": sum(losses[-50:]) / 50, "heldout_accuracy": acc,
                         "loss_every_50": losses[::50]}
    tqdm.write(f"classifier held-out accuracy {acc:.4f}")
    return model


def train_vae(split, steps: int, seed: int, log: dict):
    gen = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed + 1)
    vae = build_vae()
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
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample
        psnr = 10 * math.log10(4.0 / F.mse_loss(recon, x).item())
    log["vae"] = {"steps": steps, "final_recon_loss": sum(losses[-50:]) / 50, "heldout_psnr_db": psnr,
                  "loss_every_50": losses[::50]}
    tqdm.write(f"vae held-out reconstruction PSNR {psnr:.2f} dB")
    return vae


def encode_training_latents(vae, split, copies: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean plus ``copies`` augmented versions of every training digit, as latent means."""
    gen = torch.Generator().manual_seed(seed + 2)
    latents, labels = [], []
    with torch.no_grad():
        for copy_index in range(copies + 1):
            images = split.train_images if copy_index == 0 else augment(split.train_images, gen)
            for chunk in images.split(256):
                latents.append(vae.encode(chunk.repeat(1, 3, 1, 1)).latent_dist.mean)
            labels.append(split.train_labels)
    return torch.cat(latents), torch.cat(labels)


def train_denoiser(vae, tokenizer, latents, labels, steps: int, batch: int, seed: int, log: dict):
    gen = torch.Generator().manual_seed(seed + 3)
    torch.manual_seed(seed + 3)
    scaling = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling
    vocab = tokenizer.get_vocab()
    text_encoder = build_text_encoder(len(vocab), vocab["<|startoftext|>"], vocab["<|endoftext|>"])
    unet = build_unet()
    scheduler = build_scheduler()
    # Row t*10+d: template t for digit d; the last row is the empty prompt (classifier-free guidance).
    prompts = [tpl.format(name=name) for tpl in PROMPT_TEMPLATES for name in DIGIT_NAMES] + [""]
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
        template = torch.randint(0, len(PROMPT_TEMPLATES), (batch,), generator=gen)
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
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        losses.append(loss.item())
    log["unet"] = {"steps": steps, "batch": batch, "final_loss": sum(losses[-100:]) / 100,
                   "loss_every_50": losses[::50], "latent_scaling_factor": scaling}
    tqdm.write(f"denoiser final loss {log['unet']['final_loss']:.4f}")
    return ema_unet, ema_text, scheduler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder that receives the model folders")
    parser.add_argument("--seed", type=int, default=0)
    # Defaults are the settings of the shipped weights (see docs/model.md).
    parser.add_argument("--classifier-steps", type=int, default=800)
    parser.add_argument("--vae-steps", type=int, default=1200)
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--augmented-copies", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is reproducible bit for bit and robust on a busy 2-core machine)")
    args = parser.parse_args(argv)

    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    log: dict = {"seed": args.seed, "args": {k: str(v) for k, v in vars(args).items()}}
    split = load_split()
    args.out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".train-", dir=args.out))
    try:
        t0 = time.perf_counter()
        classifier = train_classifier(split, args.classifier_steps, args.seed, log)
        classifier.save(staging / "digits-classifier",
                        {"heldout_accuracy": log["classifier"]["heldout_accuracy"], "seed": args.seed})
        t1 = time.perf_counter()
        vae = train_vae(split, args.vae_steps, args.seed, log)
        t2 = time.perf_counter()
        write_tokenizer_files(staging / "tokenizer-src")
        tokenizer = CLIPTokenizer.from_pretrained(str(staging / "tokenizer-src"))
        latents, labels = encode_training_latents(vae, split, args.augmented_copies, args.seed)
        unet, text_encoder, scheduler = train_denoiser(vae, tokenizer, latents, labels, args.unet_steps,
                                                       args.batch, args.seed, log)
        t3 = time.perf_counter()
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.save_pretrained(str(staging / "tiny-sd-digits"), safe_serialization=True)
        # Ship the project's own tokenizer files (vocab.json, merges.txt) rather than only a tokenizer.json.
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(staging / "tokenizer-src" / name, staging / "tiny-sd-digits" / "tokenizer" / name)
        shutil.rmtree(staging / "tokenizer-src")
        log["wall_time_s"] = {"classifier": t1 - t0, "vae": t2 - t1, "unet": t3 - t2, "total": t3 - t0}
        (staging / "train_log.json").write_text(json.dumps(log, indent=1))
        for name in ("tiny-sd-digits", "digits-classifier", "train_log.json"):
            target = args.out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            (staging / name).rename(target)
        print(f"wrote {args.out / 'tiny-sd-digits'} in {t3 - t0:.0f} s")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


if __name__ == "__main__":
    main()
