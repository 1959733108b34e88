"""Tiny diffusion-transformer pipelines built from configs, with local tokenizers, saved as diffusers folders:
FluxPipeline (CLIP + T5), StableDiffusion3Pipeline (two CLIPs + T5), Flux2KleinPipeline (Qwen3) and
Flux2Pipeline (Mistral3 with a Pixtral processor). 32 px images, 16 px latents; nothing downloaded."""

from __future__ import annotations

import string
import sys
from pathlib import Path

import torch

from sd_tiny import build_tokenizer as clip_tokenizer

WORDS = list(string.ascii_lowercase)


def t5_tokenizer():
    """A T5 (Unigram) tokenizer over single letters, word-initial and inner."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + c, -1.0) for c in WORDS] + [(c, -2.0) for c in WORDS]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=32)


def _bytes_vocab(specials: list[str]) -> dict[str, int]:
    """GPT-2's byte-level alphabet (each byte as one printable character) and `specials`, as a BPE vocab."""
    from sd_tiny import SAMPLES

    sys.path.insert(0, str(SAMPLES))
    from make_digits_sd import _bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(_bytes_to_unicode().values())}
    for s in specials:
        vocab[s] = len(vocab)
    return vocab


CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def qwen_tokenizer():
    """A byte-level BPE (no merges) with Qwen's chat markers and a minimal chat template."""
    from transformers import Qwen2TokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Qwen2TokenizerFast(vocab=_bytes_vocab(specials), merges=[], unk_token=None, bos_token=None,
                             eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=64)
    tok.chat_template = CHAT
    return tok


def _vae(latent: int, **kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=latent,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         norm_num_groups=8, shift_factor=0.0, **kw)


def _clip(tokenizer, hidden: int, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                            vocab_size=len(tokenizer), max_position_embeddings=32, projection_dim=hidden,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _t5(tokenizer, width: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=width, d_ff=2 * width, d_kv=4, num_layers=1,
                                   num_heads=2, pad_token_id=0, eos_token_id=1)).eval()


def flux(root: Path):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    clip_tok, t5_tok = clip_tokenizer(root / "_clip"), t5_tokenizer()
    transformer = FluxTransformer2DModel(
        in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=(2, 2, 4), guidance_embeds=True)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(4),
                        text_encoder=_clip(clip_tok, 16), tokenizer=clip_tok, text_encoder_2=_t5(t5_tok, 16),
                        tokenizer_2=t5_tok, transformer=transformer)


def sd3(root: Path):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    clip_tok, t5_tok = clip_tokenizer(root / "_clip"), t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
        pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm")
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(4),
        text_encoder=_clip(clip_tok, 16, projection=True), tokenizer=clip_tok,
        text_encoder_2=_clip(clip_tok, 16, projection=True), tokenizer_2=clip_tok,
        text_encoder_3=_t5(t5_tok, 32), tokenizer_3=t5_tok)


def _flux2_transformer(text_width: int):
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(
        in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=3 * text_width, axes_dims_rope=(2, 2, 2, 2), guidance_embeds=False)


def _flux2_vae():
    from diffusers import AutoencoderKLFlux2

    return AutoencoderKLFlux2(block_out_channels=[8, 16], latent_channels=4, norm_num_groups=8,
                              down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)


def flux2_klein(root: Path):
    """Qwen3 with 28 layers: the pipeline stacks hidden states 9, 18 and 27."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = qwen_tokenizer()
    text = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=28, num_attention_heads=2, num_key_value_heads=1,
                                        head_dim=8, max_position_embeddings=128)).eval()
    return Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_flux2_vae(),
                              text_encoder=text, tokenizer=tok, transformer=_flux2_transformer(16))


def pixtral_processor():
    """A Pixtral processor (what Flux2Pipeline takes as its tokenizer) over a word-level vocabulary of letters,
    with a chat template that writes each message as `role: text`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PixtralImageProcessor, PixtralProcessor, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "[IMG]", "[IMG_BREAK]", "[IMG_END]"]
    words = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + WORDS + [":"])}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", model_max_length=64)
    chat = ("{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}{% else %}"
            "{% for c in m['content'] %}{{ c['text'] }}{% endfor %}{% endif %}\n{% endfor %}")
    return PixtralProcessor(image_processor=PixtralImageProcessor(patch_size=4), tokenizer=tok, patch_size=4,
                            spatial_merge_size=1, chat_template=chat)


def flux2(root: Path):
    """Mistral3 with 30 text layers (the pipeline stacks hidden states 10, 20 and 30) and a 1-layer Pixtral."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig

    processor = pixtral_processor()
    config = Mistral3Config(
        vision_config=PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, head_dim=8, image_size=32, patch_size=4),
        text_config=MistralConfig(vocab_size=len(processor.tokenizer), hidden_size=16, intermediate_size=32,
                                  num_hidden_layers=30, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                  max_position_embeddings=128),
        image_token_index=processor.tokenizer.convert_tokens_to_ids("[IMG]"), spatial_merge_size=1)
    return Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_flux2_vae(),
                         text_encoder=Mistral3ForConditionalGeneration(config).eval(), tokenizer=processor,
                         transformer=_flux2_transformer(16))


BUILDERS = {"FluxPipeline": flux, "StableDiffusion3Pipeline": sd3, "Flux2KleinPipeline": flux2_klein, "Flux2Pipeline": flux2}
FAMILY = {"FluxPipeline": "Flux.1", "StableDiffusion3Pipeline": "SD3", "Flux2KleinPipeline": "Flux.2",
          "Flux2Pipeline": "Flux.2"}


def save(cls_name: str, root: Path, seed: int = 0) -> Path:
    """The pipeline `cls_name`, seeded, saved under root/<cls_name>; the folder."""
    torch.manual_seed(seed)
    pipe = BUILDERS[cls_name](root)
    folder = root / cls_name
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def strong_adapter(pipe, path: Path, format: str = "vislora") -> Path:
    """A random LoRA on every transformer block of `pipe`, scaled up to move a 2-step image of a random model,
    saved to `path` (it stays injected)."""
    import vislora

    torch.manual_seed(3)
    vislora.inject(pipe, "transformer.blocks", rank=2, alpha=2, init="random")
    with torch.no_grad():
        for name, p in pipe.transformer.named_parameters():
            if ".up" in name or "lora_B" in name:
                p.mul_(50)
    return vislora.save_adapter(pipe, path, format=format)
