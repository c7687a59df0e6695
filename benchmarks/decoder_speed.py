"""Instance-decoder cost on CPU or GPU: one forward of a whole embedding, one training step on a crop.

What the AIS segment jobs run per tile (forward of a 64 x 64 embedding) and what finetuning with
`decoder` in `train_parts` runs per step (forward + backward + Adam on a `--crop` x `--crop` window,
micro-sam's decoder loss against random targets: the cost does not depend on them). Random weights,
seed 0. Each setting runs once untimed, then `--repeats` times; the table gives the fastest run.

    python benchmarks/decoder_speed.py                 # upscale 4 (LiteMedSAM) and 16 (micro-sam's models)
    python benchmarks/decoder_speed.py --upscales 4    # docs/benchmarks.md's numbers
    python benchmarks/decoder_speed.py --upscales 16 --variants bilinear conv_transpose --threads 1

To compare with the decoder that doubled in its first steps, run it with another checkout's package:
`PYTHONPATH=<checkout of 5d95dd1>/src python benchmarks/decoder_speed.py --upscales 4`.
"""

from __future__ import annotations

import torch
from _common import machine, markdown_table, parse_speed_args, speed_parser, timed

from tilesam.finetune.targets import decoder_loss
from tilesam.models.unetr import InstanceDecoder


def measure(upscale: int, variant: str, side: int, crop: int, device: str, repeats: int) -> list[str]:
    """Table rows of one decoder: the fastest forward and training step of `repeats` (after one untimed)."""
    torch.manual_seed(0)
    decoder = InstanceDecoder(upscale=upscale, conv_transpose=variant == "conv_transpose").to(device)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-4)
    embedding = torch.randn(1, 256, side, side, device=device)
    window = embedding[..., :crop, :crop]
    target = torch.rand(1, 3, upscale * crop, upscale * crop, device=device)

    def forward():
        decoder.eval()
        with torch.no_grad():
            return decoder(embedding)

    def step():
        decoder.train()
        loss = decoder_loss(decoder(window), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    rows = []
    for name, fn, size in (("forward", forward, side), ("train step", step, crop)):
        fn()
        best = min(timed(fn, device)[1] for _ in range(repeats))
        rows.append(f"{upscale} | {variant} | {name} | {size} x {size} | {best:.2f}")
    return rows


def main() -> None:
    parser = speed_parser(__doc__)
    parser.add_argument("--upscales", nargs="+", type=int, default=[4, 16])
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=["bilinear", "conv_transpose"],
        default=["bilinear"],
        help="upsampling layers (micro-sam's decoders come in both; conv_transpose only at upscale 16)",
    )
    parser.add_argument("--side", type=int, default=64, help="embedding side (64: every model here)")
    parser.add_argument("--crop", type=int, default=32, help="training crop side in embedding tokens")
    parser.add_argument("--repeats", type=int, default=2)
    args = parse_speed_args(parser)
    rows = [
        row
        for u in args.upscales
        for v in args.variants
        if u == 16 or v == "bilinear"
        for row in measure(u, v, args.side, args.crop, args.device, args.repeats)
    ]
    print(machine(args.device))
    print(markdown_table("upscale | variant | pass | embedding | seconds", rows))


if __name__ == "__main__":
    main()
