"""squadft: fine-tune extractive QA models on SQuAD 2.0 as a batch job."""

__version__ = "0.1.0"
