"""The knobs lab: what the sampling settings do, shown on the model's own numbers.

Knows nothing of Discord; the front-ends (Discord, console, `python -m bot probs|compare`)
only translate. Modules: `sampling` (CTranslate2's sampling step re-done in numpy),
`probs` (next-token probabilities for an ask, a step at a time), `confidence`
(each token of a finished reply scored), `compare` (one prompt, several knob
settings, through the engine), `chart` (the PNG), `help` (one or two lines per knob).
"""
