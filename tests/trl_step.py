"""One step of each of TRL's SFTTrainer, DPOTrainer and GRPOTrainer on bin/export's rows, in a process of its own
(TRL imports vLLM when it is installed, and its Accelerator state would outlive the test):

    python tests/trl_step.py EXPORTS_DIR MODEL_DIR WORK_DIR   ->   one JSON line: each trainer's steps and weight change
"""

import json
import sys


def main(exports: str, model_dir: str, work: str) -> dict:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

    import rewards

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    common = dict(max_steps=1, per_device_train_batch_size=2, report_to="none", save_strategy="no", use_cpu=True,
                  logging_steps=1, learning_rate=1e-3)

    def rows(fmt, n):
        return datasets.load_dataset(f"{exports}/{fmt}")["train"].select(range(n))  # the card names the data

    def verified(completions, answer, **_):  # our verifier as GRPO's reward function
        return [rewards.score(c, a) for c, a in zip(completions, answer, strict=True)]

    trainers = {
        "sft": lambda m: SFTTrainer(model=m, processing_class=tokenizer, train_dataset=rows("trl-sft", 4),
                                    args=SFTConfig(output_dir=f"{work}/sft", max_length=256, **common)),
        "dpo": lambda m: DPOTrainer(model=m, processing_class=tokenizer, train_dataset=rows("trl-dpo", 2),
                                    args=DPOConfig(output_dir=f"{work}/dpo", max_length=256, **common)),
        "grpo": lambda m: GRPOTrainer(model=m, processing_class=tokenizer, reward_funcs=verified,
                                      train_dataset=rows("trl-grpo", 2),
                                      args=GRPOConfig(output_dir=f"{work}/grpo", num_generations=2,
                                                      max_completion_length=8, **common)),
    }
    result = {}
    for name, make in trainers.items():
        trainer = make(AutoModelForCausalLM.from_pretrained(model_dir))
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        trainer.train()
        change = max((v - before[k]).abs().max().item() for k, v in trainer.model.state_dict().items())
        result[name] = {"steps": trainer.state.global_step, "max_weight_change": change}
    return result


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
