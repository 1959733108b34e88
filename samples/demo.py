"""Demo: put adapters into a tiny ViT and a tiny SD UNet, train a few steps, and show what changed."""

import torch

import vislora


def main() -> None:
    import timm
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=10)
    print(vislora.inject(vit, "vit.attn", rank=8, alpha=8, modules_to_save=["head"]))

    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8, attention_head_dim=8)
    print(vislora.inject(unet, {"unet.cross_attn": 4, "unet.conv": {"rank": 8, "alpha": 4}}))


if __name__ == "__main__":
    main()
