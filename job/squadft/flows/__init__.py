"""The orchestration layer: every flow a command runs, each read top-down (set up, prepare,
work, outputs) and each the only place where the stages below it meet.

- preparation: pull, parse, select and tokenize (`squadft pull`, `squadft prepare`, and the
  first step of training);
- training: `squadft train`, the whole job (prepare, train, save final/, calibrate, evaluate);
- evaluation: decode, score and calibrate a model (`squadft evaluate`, and the end of training);
- prediction: `squadft predict`;
- sweep: `squadft sweep` (plan the trials and their Slurm array and Indexed Job, train one
  trial, rank the trials by held-out F1).

The stages (squadft.data, squadft.train, squadft.evaluate, squadft.storage) never import this
package; tests/test_layers.py keeps it so.
"""
