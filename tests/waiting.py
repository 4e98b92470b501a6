"""How long a test may wait on a process it started: long enough that only a hung process ever
reaches it, however loaded the machine (the suite has passed at a load of 12 on 2 cores). Tests
wait on the state they need, never on a clock; this ceiling only ends what hangs for good."""

CEILING = 1800  # seconds
