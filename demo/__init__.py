"""The demo world: procedural datasets and a tiny pretrained CLIP, so every part runs out of the box.

- `demo.world`: the deterministic image generator (colour x shape classes).
- `demo.make_data`: writes the demo datasets in the real datasets' layout (`python -m demo.make_data`).
- `demo.pretrain_clip`: re-creates the shipped demo CLIP (`python -m demo.pretrain_clip`).
- `demo/assets/demo_clip.pt`: that CLIP, an OpenAI-format state dict (`MODEL.BACKBONE.NAME demo`).
"""
