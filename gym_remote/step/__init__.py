"""One step's path, end to end: where an observation's arrays lie (:mod:`.layout`), the
fixed-layout frames that carry steps and resets (:mod:`.frames`), the client's
:class:`~gym_remote.step.sender.StepSender` and the worker's
:class:`~gym_remote.step.responder.StepResponder`, and the worker's writes into a remote vector
env's shared batches (:mod:`.batch_writer`). See ``docs/architecture.md`` for a step's path.
"""
