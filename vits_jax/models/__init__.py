"""Flax modules of VITS, named as the official code: `synthesizer.SynthesizerTrn` (the
generator G, built only by `synthesizer.build_synthesizer(config)`), its parts
(`text_encoder`, `posterior_encoder`, `flow`, `duration`, `decoder` (HiFi-GAN), `attentions`,
`modules`, `transforms`, `commons`, `layers`) and `discriminators` (the MPD)."""
