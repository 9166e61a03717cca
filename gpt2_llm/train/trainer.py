"""Trainer: the training loop around a GPT2 model, with evaluation, checkpoints and exact resume.

    text files -> token_cache.load_tokens (memory-mapped shards) -> TokenDataset -> random batches
    step:  grad_accum x (forward + backward under autocast) -> clip grads to 1.0 -> AdamW (fused)
    every eval_interval steps and at the end: val loss, bits per byte, a sample, a checkpoint

The step (`train_step`) touches no files and prints nothing; the loop around it does the I/O. Under
torchrun (see distributed.py) each rank runs train_step on its own slice of the global batch through
DistributedDataParallel (or, with --fsdp, FSDP2-sharded), and only rank 0 (`is_main_process`) logs,
samples and writes checkpoints: whole, unsharded weights, so they resume in one process or in many.
What a checkpoint holds is resume.py's; Ctrl-C and SIGTERM are signals.py's.
"""
import math
import os
import random
import sys
import time
from dataclasses import dataclass, fields

import numpy as np
import torch
from tqdm import tqdm

from gpt2_llm.chat.template import END
from gpt2_llm.checkpoints import checkpoint
from gpt2_llm.train import distributed
from gpt2_llm.checkpoints import loading
from gpt2_llm.train import resume
from gpt2_llm.train.config import DEFAULT_MODEL, DEFAULT_PRESET, PRESET_TABLE, TrainingConfig
from gpt2_llm.data.dataset import IGNORE_INDEX, TokenDataset, token_byte_lengths
from gpt2_llm.data.token_cache import load_tokens
from gpt2_llm.device import Precision, autocast, choose_dtype, dtype_name, has_fast_bf16, pick_device
from gpt2_llm.errors import UserError
from gpt2_llm.gpt2 import GPT2
from gpt2_llm.train.metrics import MetricsLog, bits_per_byte
from gpt2_llm.train.optim import learning_rate_at, make_optimizer
from gpt2_llm.train.signals import GracefulStop
from gpt2_llm.train.resume import TrainingState
from gpt2_llm.tokenizer.vocab import check_vocab, load_vocab

# The step budget of a run bounded by --max-time alone: more steps than any run takes.
UNTIL_MAX_TIME = 1 << 60


@dataclass
class TrainResult:
    stop_reason: str  # "finished", "max_time" or "interrupted"
    steps: int
    val_loss: float | None
    val_bpb: float | None
    checkpoint_path: str | None
    signal_number: int | None = None


class Trainer:
    def __init__(self, model: GPT2, bpe, max_seq_len: int | TrainingConfig, batch_size: int | None = None,
                 learning_rate: float | None = None,
                 distributed_context: distributed.DistributedContext | None = None, adapter: dict | None = None,
                 **options):
        """Trainer(model, bpe, TrainingConfig(...)), or the seed's form: Trainer(model=..., bpe=...,
        max_seq_len=..., batch_size=..., learning_rate=..., **options), options being any other TrainingConfig
        field (grad_accum, warmup_steps, dtype, device, seed, ...); max_seq_len is the config's context_length.

        distributed_context: from distributed.start() under torchrun; batch_size is then per rank.
        adapter: lora.adapter_metadata(...) when model carries LoRA adapters (lora.add_lora): only
        they train (the optimizer holds just the parameters that require grad), and checkpoints
        are adapter files, holding the adapters alone.
        """
        if isinstance(max_seq_len, TrainingConfig):  # the config passed whole
            if batch_size is not None or learning_rate is not None or options:
                raise UserError("Trainer(model, bpe, config) takes its settings from the config alone")
            config = max_seq_len
        else:
            config = TrainingConfig(max_seq_len, batch_size, learning_rate, **options)
        self.config = config
        if config.context_length > model.config.max_seq_len:
            raise UserError(
                f"context {config.context_length} is longer than the model's max_seq_len {model.config.max_seq_len}"
            )
        check_vocab(bpe, {}, model.config, "the model (a new one: GPT2(vocab_size=bpe.get_model_vocab_size(), ...))")
        self.bpe = bpe
        self.adapter = adapter
        self.distributed = distributed_context
        if distributed_context is None:
            self.device = pick_device(config.device)
        else:
            self.device = distributed.device_for(distributed_context, config.device)
        self.precision = choose_dtype(config.dtype, self.device)  # printed with the plan when training starts
        self.dtype = self.precision.dtype
        config.dtype = dtype_name(self.dtype)  # a resumed run keeps the precision it started with
        self.is_main_process = distributed_context is None or distributed_context.is_main_process
        self.world_size = 1 if distributed_context is None else distributed_context.world_size
        if config.fsdp and distributed_context is None:
            raise UserError("--fsdp shards the model across processes: launch with torchrun --nproc_per_node=N")
        self.sharded = config.fsdp
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores: ~8x, 10-bit mantissa
            torch.backends.cudnn.allow_tf32 = True
        self.model = model.to(self.device)  # always the plain GPT2: eval, samples and checkpoints use it
        model.decoder.gradient_checkpointing = config.grad_checkpoint
        if distributed_context is None or config.fsdp:  # FSDP2 hooks model's own forward: model.loss works
            self.train_model = distributed.shard(model) if config.fsdp else model
            loss_fn = model.loss
        else:  # the loss must run through DDP's forward, which readies the gradient all-reduce
            self.train_model = distributed.wrap(model, self.device)
            loss_fn = lambda x, y: self.train_model(x, targets=y)  # noqa: E731
        self.loss_fn = torch.compile(loss_fn) if config.compile else loss_fn
        self.optimizer = make_optimizer(config.optimizer, model, config.learning_rate, config.weight_decay, config.betas,
                                        self.device.type)
        # fp16 has too few exponent bits for small gradients: scale the loss up, unscale before clipping.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.byte_lengths = torch.from_numpy(token_byte_lengths(bpe, model.config.vocab_size))
        self.state = TrainingState()
        self.last_saved_step = None
        self.seed_everything(config.seed)

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def create_trainer_from_vocab(cls, vocab_path, embedding_dim, num_layers, num_heads, max_seq_len,
                                  batch_size, learning_rate, dropout=0.0, use_rope=False, seed=1337,
                                  **options) -> "Trainer":
        """A fresh model sized for the vocab at vocab_path (which must exist), and its trainer."""
        bpe = load_vocab(vocab_path)
        torch.manual_seed(seed)  # the initial weights are part of what a seed reproduces
        model = GPT2(vocab_size=bpe.get_model_vocab_size(), embedding_dim=embedding_dim, num_layers=num_layers,
                     num_heads=num_heads, max_seq_len=max_seq_len, dropout=dropout, use_rope=use_rope)
        return cls(model, bpe, max_seq_len, batch_size, learning_rate, seed=seed, **options)

    @classmethod
    def from_preset(cls, bpe, preset: str = DEFAULT_PRESET, shape: dict | None = None, **options) -> "Trainer":
        """A fresh model of a named preset (train/config.py's PRESET_TABLE) for bpe's vocab, with the GPT2Config
        fields in shape over the preset's, and its trainer: the preset's training settings under options."""
        chosen = PRESET_TABLE[preset]
        shape = {"dropout": 0.0, "use_rope": False, **chosen.shape, **(shape or {})}
        settings = {**chosen.training, **options}
        return cls.create_trainer_from_vocab(bpe.vocab_path, shape["embedding_dim"], shape["num_layers"],
                                             shape["num_heads"], shape["max_seq_len"], settings.pop("batch_size"),
                                             settings.pop("learning_rate"), dropout=shape["dropout"],
                                             use_rope=shape["use_rope"], **settings)

    @classmethod
    def from_checkpoint(cls, path, bpe, **options) -> "Trainer":
        """Rebuild model, optimizer, schedule position and RNG states from a checkpoint to resume exactly.

        options override the checkpoint's saved training settings (device, dtype, log_file, ...).
        A checkpoint written by model.save (weights only) starts a fresh optimizer.
        """
        tensors, metadata = checkpoint.load_checkpoint(path)
        check_vocab(bpe, metadata, checkpoint.config_from_metadata(metadata, path), path)  # before building it
        model = loading.model_from_tensors(GPT2, tensors, metadata, path)
        return cls.resume(model, bpe, tensors, metadata, **options)

    @classmethod
    def resume(cls, model: GPT2, bpe, tensors: dict, metadata: dict, **options) -> "Trainer":
        """A trainer for model (its weights already loaded from the checkpoint) that continues the
        checkpoint's run: its training settings, optimizer, schedule position and RNG states."""
        config = model.config
        known = {f.name for f in fields(TrainingConfig)}
        saved = {k: v for k, v in metadata.get("train_args", {}).items() if k in known}
        # Weights alone (model.save, a Hugging Face directory) train on as a new run of the default preset
        # would: its batch, lr and optimizer together, never one preset's lr with another's optimizer.
        defaults = {} if saved else PRESET_TABLE[DEFAULT_PRESET].training
        settings = {**defaults, **saved, **options}
        settings.setdefault("context_length", config.max_seq_len)
        trainer = cls(model, bpe, settings.pop("context_length"), settings.pop("batch_size"),
                      settings.pop("learning_rate"), **settings)
        if "training" in metadata:
            trainer.restore(tensors, metadata)
        if "dtype" in saved and "dtype" not in options:
            name = saved["dtype"]
            slow = name == "bf16" and not has_fast_bf16(trainer.device)
            trainer.precision = Precision(trainer.dtype, f"{name}: the resumed run's precision" + (
                f" (emulated on this {trainer.device.type}: --dtype fp32 is faster)" if slow else
                "; --dtype overrides"))
        changed = [f"{key} {saved[key]!r} -> {value!r}" for key, value in trainer.config.run_settings().items()
                   if key in saved and key in options and saved[key] != value]
        if changed:
            trainer.say(f"Settings given now replace the checkpoint's: {', '.join(changed)}")
        return trainer

    # --- the step: compute only, no I/O ----------------------------------------------------------

    def train_step(self, data: TokenDataset, lr: float) -> tuple[float, float]:
        """One optimizer step over grad_accum micro-batches -> (mean loss, grad norm before clipping).

        A non-finite loss or gradient leaves the weights untouched (the update is skipped), so the
        caller can stop with the last good weights still in memory and on disk.
        """
        total_loss = torch.zeros((), device=self.device)
        for micro_step in range(self.config.grad_accum):
            x, y = self.to_device(*self.next_batch(data))
            # Ranks average their gradients once per step, in the last micro-step's backward.
            with distributed.no_sync(self.train_model, sync=micro_step == self.config.grad_accum - 1):
                with autocast(self.device, self.dtype):
                    loss = self.loss_fn(x, y) / self.config.grad_accum
                self.scaler.scale(loss).backward()
            total_loss += loss.detach()
        if self.distributed is not None:  # report the loss of the whole global batch, the same on every rank
            torch.distributed.all_reduce(total_loss)
            total_loss /= self.world_size
        self.scaler.unscale_(self.optimizer)
        grad_norm = distributed.full_tensor(torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                                           self.config.grad_clip))
        loss_value, norm_value = torch.stack([total_loss.float(), grad_norm.float()]).tolist()  # one device sync
        if not self.is_finite_step(loss_value, norm_value):
            self.optimizer.zero_grad(set_to_none=True)
            return loss_value, norm_value
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, norm_value

    def next_batch(self, data: TokenDataset) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's micro-batch. Every rank draws the same global batch (one generator, one seed)
        and keeps its own rows: N ranks x batch B see exactly the windows one process with batch N*B sees.
        """
        x, y = data.random_batch(self.config.batch_size * self.world_size, self.batch_generator)
        if self.distributed is None:
            return x, y
        return distributed.rank_slice(x, self.distributed), distributed.rank_slice(y, self.distributed)

    @property
    def tokens_per_step(self) -> int:
        """Tokens in one optimizer step over all ranks."""
        return self.world_size * self.config.batch_size * self.config.grad_accum * self.config.context_length

    def is_finite_step(self, loss: float, grad_norm: float) -> bool:
        # With fp16 the scaler handles overflowing gradients itself (skips the step, lowers the scale).
        return math.isfinite(loss) and (self.scaler.is_enabled() or math.isfinite(grad_norm))

    def to_device(self, x: torch.Tensor, y: torch.Tensor):
        if self.device.type == "cuda":  # pinned memory lets the copy overlap with the GPU's work
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    @torch.no_grad()
    def evaluate(self, data: TokenDataset) -> tuple[float, float]:
        """Mean val loss (nats/token) and bits per byte over the fixed val windows."""
        self.model.eval()
        total_nats, total_tokens, total_bytes = 0.0, 0, 0
        for x, y in data.eval_batches(self.config.batch_size, self.config.eval_tokens):
            with autocast(self.device, self.dtype):
                loss = self.model.loss(*self.to_device(x, y))
            scored = y[y != IGNORE_INDEX]  # every target of a text; a chat's assistant tokens only
            total_nats += loss.item() * scored.numel()  # mean -> sum
            total_tokens += scored.numel()
            total_bytes += int(self.byte_lengths[scored].sum())
        self.model.train()
        return total_nats / total_tokens, bits_per_byte(total_nats, total_bytes)

    @torch.no_grad()
    def sample(self, data: TokenDataset, num_tokens: int) -> str:
        """Continue the start of the val text (a chat run: answer its first held-out prompt, to the end of the
        turn), with a fixed seed so samples are comparable over time."""
        prompt = data.sample_prompt()[None].to(self.device)
        generator = torch.Generator(self.device).manual_seed(self.config.seed)
        end_of_turn = self.bpe.special_tokens.get(END) if self.config.chat else None
        with autocast(self.device, self.dtype):
            ids = self.model.generate(prompt, num_tokens, temperature=0.8, top_k=40, generator=generator,
                                      eos_token_id=end_of_turn,
                                      vocab_size=self.bpe.vocab_size)  # never a padding row
        return self.bpe.decode(ids[0].tolist())

    # --- the loop: schedule, stopping, evaluation, checkpoints, logs --------------------------

    def train(self, filepath, num_epochs: float | None = None, save_path=DEFAULT_MODEL, max_steps: int | None = None,
              max_time: float | None = None, val_file=None) -> TrainResult:
        """Train on a corpus for num_epochs (or max_steps steps, or max_time seconds, whichever ends
        first), evaluating every eval_interval steps and at the end, checkpointing to save_path.
        No length given: one epoch, or the rest of a resumed run's saved plan (see plan_run).
        num_epochs None with max_time: as many steps as the time allows, however many epochs that is.

        Ctrl-C / SIGTERM finish the current step, save and return with stop_reason "interrupted".
        A NaN/inf loss raises UserError; the last checkpoint on disk is left as it was.

        filepath: a text file, or several inputs (files, folders, globs, JSON lines; see corpus.py).
        val_file: validate on this text (same kinds of inputs) instead of the corpus's last val_fraction.
        """
        data = self.load_data(filepath, val_file)
        self.plan_run(data, num_epochs, max_steps, max_time)
        state, config = self.state, self.config
        tokens_per_step = self.tokens_per_step
        stop_reason = None
        self.model.train()
        with GracefulStop() as signals, MetricsLog(config.log_file if self.is_main_process else None) as log, \
                self.progress_bar() as bar:
            if config.eval_at_start and state.step == state.run_start_step and len(data.val) and \
                    (self.is_main_process or self.sharded):
                val_loss, val_bpb = self.evaluate(data)
                self.say(f"step {state.step} (before training): val loss {val_loss:.4f}, val bits/byte {val_bpb:.4f}")
                log.write(dict(step=state.step, val_loss=val_loss, val_bpb=val_bpb))
            while stop_reason is None:
                lr = self.learning_rate()
                start = time.perf_counter()
                loss, grad_norm = self.train_step(data, lr)
                seconds = time.perf_counter() - start
                if self.distributed is not None:
                    seconds = self.agree_across_ranks(seconds, signals)
                if not self.is_finite_step(loss, grad_norm):
                    raise self.diverged(loss, grad_norm, lr)
                state.step += 1
                state.tokens_seen += tokens_per_step
                state.elapsed += seconds
                record = dict(step=state.step, loss=loss, lr=lr, tokens_per_s=tokens_per_step / seconds,
                              elapsed=round(state.elapsed, 3), tokens=state.tokens_seen, grad_norm=grad_norm)
                if state.run_finished():
                    stop_reason = "finished" if state.step >= state.run_total_steps else "max_time"
                elif signals.signal_number is not None:
                    stop_reason = "interrupted"
                if stop_reason == "interrupted":
                    self.save_checkpoint(save_path)  # no eval: the user is waiting
                elif stop_reason or state.step % config.eval_interval == 0:
                    record.update(self.evaluate_and_save(data, save_path))
                log.write(record)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.1e}", tok_s=f"{record['tokens_per_s']:,.0f}")
                bar.update(self.progress() - bar.n)
        return TrainResult(stop_reason, state.step, state.last_val_loss, state.last_val_bpb,
                           str(save_path) if self.last_saved_step is not None else None, signals.signal_number)

    def load_data(self, filepath, val_file=None) -> TokenDataset:
        """The corpus's tokens, memory-mapped; under torchrun the main process encodes what is not
        cached yet while the others wait, then every rank maps the same shards."""
        config = self.config
        options = dict(text_field=config.text_field, skip_bad_files=config.skip_bad_files, log=self.say,
                       progress=config.progress and self.is_main_process)
        if config.chat:  # conversations (JSON lines), a file small enough to read whole
            from gpt2_llm.chat.conversations import ConversationDataset, read_conversations

            paths = [filepath] if isinstance(filepath, (str, os.PathLike)) else list(filepath)
            if len(paths) != 1 or val_file is not None:
                raise UserError("chat fine-tuning reads one file of conversations (JSON lines) and holds out its "
                                "last --val-fraction: pass one file, and no --val-file")
            return ConversationDataset(read_conversations(paths[0]), self.bpe, config.context_length,
                                       config.val_fraction)
        with distributed.main_process_first(self.distributed):
            tokens = load_tokens(filepath, self.bpe, **options)
            val_tokens = None if val_file is None else load_tokens(val_file, self.bpe, **options)
        return TokenDataset(tokens, config.context_length, config.val_fraction, val_tokens)

    def plan_run(self, data: TokenDataset, num_epochs, max_steps, max_time) -> None:
        """Plan the run these steps belong to, and say which plan that is.

        A length (num_epochs, max_steps, max_time: whichever ends first) counts from the current step:
        on a resumed checkpoint, max_steps=2 (--max-steps 2) means two more steps. A checkpoint of an
        interrupted run follows its saved plan when no length is given; a length given replaces the rest
        of it (the run keeps its warmup; its cosine is fitted to the new end). After a finished run a new
        one starts, with a fresh warmup and cosine. One epoch = len(train tokens) / tokens per step.
        """
        state, config = self.state, self.config
        steps_per_epoch = max(1, data.windows_per_epoch() // (self.world_size * config.batch_size * config.grad_accum))
        interrupted = state.step > 0 and not state.run_finished()
        if interrupted and num_epochs is None and max_steps is None and max_time is None:
            self.say(f"Resuming the interrupted run at step {state.step}, following its saved plan: "
                     f"{self.plan_summary()} (a --max-steps, --max-time or --epochs given now replaces it)")
        else:
            steps = run_length(steps_per_epoch, num_epochs, max_steps, max_time)
            if interrupted:
                state.run_total_steps = state.step + steps
                state.run_warmup_steps = min(state.run_warmup_steps, state.run_total_steps - state.run_start_step)
                state.run_max_time = None if max_time is None else state.run_elapsed + max_time
                self.say(f"Resuming the interrupted run at step {state.step} for the length given now, not its "
                         f"saved plan: {self.plan_summary()}")
            else:
                warmup = config.warmup_steps if config.warmup_steps is not None else min(100, steps // 20)
                state.run_start_step, state.run_total_steps = state.step, state.step + steps
                state.run_warmup_steps = min(warmup, steps)
                state.run_max_time, state.run_start_elapsed = max_time, state.elapsed
                if state.step > 0:
                    self.say(f"The checkpoint's run is complete; starting a new run of {steps} steps "
                             "with a fresh warmup and cosine schedule")
        n = self.model.num_parameters()
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        what = f"a {n / 1e6:.2f}M-parameter model" + (
            f" ({trainable / 1e6:.3f}M trainable: {100 * trainable / n:.2f}%)" if trainable != n else "")
        self.say(
            f"Training {what} on {self.device.type} ({dtype_name(self.dtype)}): "
            f"{data.describe()}; one epoch = {steps_per_epoch:,} steps "
            f"of {config.batch_size}x{config.grad_accum}x{config.context_length} tokens"
            + (f" x {self.world_size} processes" if self.distributed is not None else "") + f"; {self.plan_summary()}"
        )
        self.say(f"Precision {self.precision.reason}")

    def plan_summary(self) -> str:
        """'planned steps 0..500', 'planned steps 0..500, at most 60s' or 'steps from 0 for 60s'."""
        state = self.state
        if state.run_total_steps - state.run_start_step >= UNTIL_MAX_TIME:
            return f"steps from {state.run_start_step} for {state.run_max_time:g}s"
        return f"planned steps {state.run_start_step}..{state.run_total_steps}" + (
            f", at most {state.run_max_time:g}s" if state.run_max_time else "")

    def learning_rate(self) -> float:
        state = self.state
        time_fraction = state.run_elapsed / state.run_max_time if state.run_max_time else 0.0
        return learning_rate_at(state.step - state.run_start_step, self.config.learning_rate, state.run_warmup_steps,
                                state.run_total_steps - state.run_start_step, self.config.min_lr_ratio, time_fraction)

    def agree_across_ranks(self, seconds: float, signals: "GracefulStop") -> float:
        """The slowest rank's step time, and a stop signal any rank received, so that every rank keeps
        the same clock (--max-time) and stops at the same step; a rank left behind would wait forever.
        """
        seconds, signal_number = distributed.all_reduce([seconds, signals.signal_number or 0],
                                                        torch.distributed.ReduceOp.MAX, self.device)
        if signal_number and signals.signal_number is None:
            signals.signal_number = int(signal_number)
        return seconds

    def evaluate_and_save(self, data: TokenDataset, save_path) -> dict:
        state = self.state
        if not (self.is_main_process or self.sharded):  # DDP: rank 0 evaluates and saves alone; the
            return {}  # others go on. FSDP: every rank takes part in the forward's all-gathers
        if not len(data.val):
            self.save_checkpoint(save_path)
            return {}
        val_loss, val_bpb = self.evaluate(data)
        state.last_val_loss, state.last_val_bpb = val_loss, val_bpb
        if state.best_val_loss is None or val_loss < state.best_val_loss:
            state.best_val_loss, state.best_val_bpb = val_loss, val_bpb
        self.say(f"step {state.step}: val loss {val_loss:.4f}, val bits/byte {val_bpb:.4f}")
        if self.config.sample_tokens:  # under FSDP every rank samples (the same tokens): weights are gathered per layer
            self.say(f"  sample: {self.sample(data, self.config.sample_tokens)!r}")
        self.save_checkpoint(save_path)
        return {"val_loss": val_loss, "val_bpb": val_bpb}

    def diverged(self, loss: float, grad_norm: float, lr: float) -> UserError:
        what = f"the loss became {loss}" if not math.isfinite(loss) else f"the gradient norm became {grad_norm}"
        kept = (f"the last good checkpoint (step {self.last_saved_step}) was kept"
                if self.last_saved_step is not None else "no checkpoint was written")
        return UserError(
            f"training diverged: {what} at step {self.state.step + 1} (lr {lr:.2e}); the step was not applied and "
            f"{kept}. Try a lower --lr, a longer --warmup, or --dtype fp32"
        )

    def progress_bar(self):
        state = self.state
        if state.run_max_time:  # time-boxed: the bar (and its ETA) counts seconds
            total, unit = math.ceil(state.run_max_time), "s"
        else:
            total, unit = state.run_total_steps, "step"
        return tqdm(total=total, initial=self.progress(), unit=unit, dynamic_ncols=True, leave=False,
                    disable=not (self.config.progress and self.is_main_process))

    def progress(self) -> int:
        """Where the progress bar stands, in whole units as every tqdm bar counts: steps, or with
        --max-time seconds (65, not 65.14499999999967)."""
        state = self.state
        if state.run_max_time:
            return min(int(state.run_elapsed), math.ceil(state.run_max_time))
        return state.step

    def say(self, message: str) -> None:
        if self.is_main_process:
            tqdm.write(message, file=sys.stdout)

    # --- checkpoints and reproducibility ---------------------------------------------------------

    def seed_everything(self, seed: int) -> None:
        rank = 0 if self.distributed is None else self.distributed.rank
        torch.manual_seed(seed + rank)  # dropout (and CUDA's generators): other masks on other rows
        np.random.seed(seed)
        random.seed(seed)
        self.batch_generator = torch.Generator().manual_seed(seed)  # which windows each step trains on

    def save_checkpoint(self, path) -> None:
        """Write everything this run needs to resume exactly, atomically (see resume.py)."""
        resume.save(self, path)

    def restore(self, tensors: dict, metadata: dict) -> None:
        """Load the optimizer, schedule position and RNG states saved by save_checkpoint."""
        resume.restore(self, tensors, metadata)


def run_length(steps_per_epoch: int, num_epochs, max_steps, max_time) -> int:
    """Steps in a run of num_epochs or max_steps (UNTIL_MAX_TIME when max_time alone bounds it).

    run_length(100, None, None, None) -> 100 (one epoch);  run_length(100, 0.5, None, None) -> 50
    """
    if max_steps is not None and max_steps < 1:
        raise UserError(f"--max-steps must be at least 1, got {max_steps}")
    if max_time is not None and max_time <= 0:
        raise UserError(f"--max-time must be positive, got {max_time}")
    if num_epochs is None and max_time is None:
        num_epochs = 1
    if max_steps is None and num_epochs is not None and not num_epochs > 0:
        raise UserError(f"--epochs must be positive, got {num_epochs}")
    if max_steps is not None:
        return max_steps
    if num_epochs is not None:
        return max(1, round(num_epochs * steps_per_epoch))
    return UNTIL_MAX_TIME
