"""What more than one test module needs. A test module imports from here, never from
another test module; nothing here is collected as tests.

- ``frames``: hand-written bad, valid and rejected frames and the strategies that make and
  mutate server frames (test_frames, test_differential);
- ``programs``: programs of Sink calls, the frame in each input type, a call's outcome in
  a form that compares (test_sink_model, test_differential, test_twin_fast_path);
- ``differential``: the engine that runs a program on the compiled core, the twin and a
  shadow sink and compares every result (test_hostile's smoke run; fuzz/fuzz_sink.py
  imports it from here);
- ``scripted``: a websocket server that plays a script, and the frames scripts are made
  of (test_hostile, test_faults);
- ``rawserver``: a TCP server that speaks as little HTTP and websocket as a test wants
  (test_handshake, test_hostile, test_receive_path); ``fragment_flood``: a flood run in a
  process of its own (``python -m helpers.fragment_flood``, from tests/).

The independent reference model stays apart, in tests/reference.py: written from
docs/sink.md, it imports no helper (helpers may import it).
"""
