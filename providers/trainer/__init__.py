"""ftctl's own trainer: TRL/PEFT fine-tuning run inside a Ray job (or any
process), resumable from its checkpoints, and the answer job the evaluation
gate runs on the cluster.

`python -m ftctl.providers.trainer train SPEC` trains, `... answer SPEC`
answers an eval batch, `... tiny OUT FILES...` builds a tiny offline model
(tests and the demo). The spec is JSON (`protocol`); what the trainer says
comes as `ftctl-log {json}` lines on stdout, which the Ray job's log keeps
and the provider client reads back. Nothing here imports the controller.
"""
