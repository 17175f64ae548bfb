"""Drop-in receive paths for voice-agent frameworks.

Each submodule imports its framework when it is imported, never before: ``import
flushsink`` (and this package) imports none of them.

- :mod:`flushsink.integrations.pipecat`: ``CartesiaTTSService`` for pipecat-ai
  (``pip install flushsink[pipecat]``);
- :mod:`flushsink.integrations.livekit`: ``TTS`` for LiveKit Agents' Cartesia plugin
  (``pip install flushsink[livekit]``).

docs/integrations.md says what each stock service does and where the drop-in differs.
"""
