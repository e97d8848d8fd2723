from dataclasses import dataclass


@dataclass
class AsyncEngineArgs:
    model: str
    tokenizer: str | None = None
    max_num_seqs: int = 256
    max_model_len: int | None = None
    trust_remote_code: bool = False
    disable_log_stats: bool = False
