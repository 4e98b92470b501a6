"""A tiny randomly initialised Stable Diffusion in diffusers' format, built and saved locally.

The layout is the hub repositories' (CompVis/stable-diffusion-v1-4): ``unet/``, ``vae/``,
``text_encoder/`` (transformers' ``save_pretrained``), ``tokenizer/`` (vocab.json, merges.txt,
tokenizer_config.json, special_tokens_map.json) and ``scheduler/scheduler_config.json`` (SD's
PNDM config: scaled-linear betas). Every network is diffusers' or transformers' own class with
small settings; the tokenizer is a real CLIP byte-level BPE whose vocabulary is written here: the
256 byte symbols, each also with CLIP's end-of-word mark ``</w>``, a few merges, and the two
special tokens, ids in the order CLIP's own vocab.json has them.

Latents 4 x 8 x 8, images 3 x 64 x 64 (a VAE of four levels: SD's factor 8), 77 tokens.
"""

import json
from pathlib import Path

import torch

MAX_TOKENS = 77  # CLIP's context, as SD's tokenizer_config.json has it
# a few merges, so that some words are single tokens and others split (both paths of the BPE)
MERGES = ("o n", "t h", "th e</w>", "c a", "ca t</w>", "d o", "do g</w>", "o n</w>",
          "r e", "re d</w>", "s k", "sk y</w>")


def bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of byte-level BPE (GPT-2's, which CLIP uses)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def write_tokenizer(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_TOKENS,
         "do_lower_case": True, "errors": "replace", "add_prefix_space": False}))
    return directory


def vocab_size() -> int:
    return 2 * 256 + len(MERGES) + 2


def save_tiny_sd(root: Path, seed: int = 0) -> Path:
    """Write the tiny model under ``root``; returns ``root``."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = Path(root)
    torch.manual_seed(seed)
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=1, norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).save_pretrained(root / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
        layers_per_block=1, norm_num_groups=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4).save_pretrained(root / "vae")
    config = CLIPTextConfig(vocab_size=vocab_size(), hidden_size=32, intermediate_size=37,
                            num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=MAX_TOKENS, projection_dim=32,
                            bos_token_id=vocab_size() - 2, eos_token_id=vocab_size() - 1,
                            pad_token_id=vocab_size() - 1)
    CLIPTextModel(config).save_pretrained(root / "text_encoder")
    write_tokenizer(root / "tokenizer")
    # SD v1's scheduler_config.json: PNDM over scaled-linear betas
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True,
                  steps_offset=1).save_pretrained(root / "scheduler")
    return root


PROMPTS = ("a red cat on the sky", "a dog", "the sky", "a cat on a red dog",
           "ünïcode prompt, with punctuation!")


def sd_pipeline(model):
    """A diffusers StableDiffusionPipeline of one's own, holding the adapter's networks."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
        unet=model.unet, scheduler=PNDMScheduler.from_config(model.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
