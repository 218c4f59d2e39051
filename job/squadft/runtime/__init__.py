"""How a squadft process runs, whatever the command: the launch and the process group
(distributed), the numeric precision (precision), and what SIGTERM/SIGUSR1 do (preemption)."""
