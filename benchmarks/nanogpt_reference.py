# nanoGPT's model and training loop, vendored as a single-file reference for benchmarks/vs_nanogpt.py.
#
# From https://github.com/karpathy/nanoGPT (model.py and train.py, commit 3adf61e), under its licence:
#
# MIT License
#
# Copyright (c) 2022 Andrej Karpathy
#
# Permission is hereby granted, free of charge, to any person obtaining a copy
# of this software and associated documentation files (the "Software"), to deal
# in the Software without restriction, including without limitation the rights
# to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
# copies of the Software, and to permit persons to whom the Software is
# furnished to do so, subject to the following conditions:
#
# The above copyright notice and this permission notice shall be included in all
# copies or substantial portions of the Software.
#
# THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
# IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
# FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
# AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
# LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
# OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
# SOFTWARE.
"""nanoGPT's shakespeare_char CPU recipe, in one file: plain torch, no Keras, no zoo.

    python benchmarks/nanogpt_reference.py CORPUS.txt [--max_iters 2000] [--json-only]

The defaults are nanoGPT's README recipe for a CPU:

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
        --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
        --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

i.e. 4 layers, 4 heads, width 128, context 64, batch 12, 2000 iterations, no dropout, no biases
(train.py's default), AdamW (lr 1e-3, betas 0.9/0.99, weight decay 0.1 on 2-D weights only), linear
warmup over 100 iterations then cosine decay to 1e-4 at lr_decay_iters, gradient clipping at 1.0,
train and val loss estimated over 20 batches each every 250 iterations, the loss printed every
iteration (one `.item()` per step, as nanoGPT does with --log_interval=1).

What is kept as nanoGPT has it: the model (model.py's GPT, Block, CausalSelfAttention with
`scaled_dot_product_attention`, MLP, LayerNorm, weight tying, GPT-2 init), `configure_optimizers`,
`get_batch` (random offsets), `estimate_loss`, `get_lr` and the loop of train.py, including its
off-by-one (iterations 0 .. max_iters, max_iters + 1 updates, the last evaluation at max_iters).

What was cut: DDP / torchrun, wandb, checkpoint writing and `init_from` resume / GPT-2 weights,
`torch.compile`, autocast and the GradScaler (fp32 on the CPU), `generate`, MFU estimates, the
configurator (argparse instead), and data/shakespeare_char/prepare.py's files: the corpus is
read and tokenized here (sorted characters of the whole text, first 90% train, last 10% val,
as prepare.py does) and held in memory instead of memory-mapped .bin files.

The last line of output is JSON: final train/val loss (the evaluation at max_iters), the wall
time of the whole process from interpreter start (imports included) and of the loop alone, and
training tokens/s.
"""

import argparse
import json
import math
import time

_PROCESS_START = time.time()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402


# -- model.py ---------------------------------------------------------------------------------------

class LayerNorm(nn.Module):
    """ LayerNorm but with an optional bias. PyTorch doesn't support simply bias=False """

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config["n_embd"] % config["n_head"] == 0
        self.c_attn = nn.Linear(config["n_embd"], 3 * config["n_embd"], bias=config["bias"])
        self.c_proj = nn.Linear(config["n_embd"], config["n_embd"], bias=config["bias"])
        self.resid_dropout = nn.Dropout(config["dropout"])
        self.n_head = config["n_head"]
        self.n_embd = config["n_embd"]
        self.dropout = config["dropout"]

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                           dropout_p=self.dropout if self.training else 0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config["n_embd"], 4 * config["n_embd"], bias=config["bias"])
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config["n_embd"], config["n_embd"], bias=config["bias"])
        self.dropout = nn.Dropout(config["dropout"])

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config["n_embd"], bias=config["bias"])
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config["n_embd"], bias=config["bias"])
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config["vocab_size"], config["n_embd"]),
            wpe=nn.Embedding(config["block_size"], config["n_embd"]),
            drop=nn.Dropout(config["dropout"]),
            h=nn.ModuleList([Block(config) for _ in range(config["n_layer"])]),
            ln_f=LayerNorm(config["n_embd"], bias=config["bias"]),
        ))
        self.lm_head = nn.Linear(config["n_embd"], config["vocab_size"], bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config["n_layer"]))
        n_params = sum(p.numel() for p in self.parameters()) - self.transformer.wpe.weight.numel()
        print("number of parameters: %.2fM" % (n_params / 1e6,))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            logits = self.lm_head(x[:, [-1], :])
            loss = None
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas):
        params = [p for p in self.parameters() if p.requires_grad]
        decay_params = [p for p in params if p.dim() >= 2]
        nodecay_params = [p for p in params if p.dim() < 2]
        optim_groups = [{"params": decay_params, "weight_decay": weight_decay},
                        {"params": nodecay_params, "weight_decay": 0.0}]
        return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas)


# -- train.py ---------------------------------------------------------------------------------------

def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("corpus", help="A UTF-8 text file (nanoGPT's is tiny Shakespeare, 1,115,394 characters).")
    p.add_argument("--max-chars", type=int, default=None, help="Use only the first N characters of the corpus.")
    p.add_argument("--eval_interval", type=int, default=250)
    p.add_argument("--log_interval", type=int, default=1)
    p.add_argument("--eval_iters", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=12)
    p.add_argument("--block_size", type=int, default=64)
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--bias", action="store_true", help="Biases in Linear and LayerNorm (nanoGPT's default: none).")
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--max_iters", type=int, default=2000)
    p.add_argument("--weight_decay", type=float, default=1e-1)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.99)
    p.add_argument("--grad_clip", type=float, default=1.0)
    p.add_argument("--warmup_iters", type=int, default=100)
    p.add_argument("--lr_decay_iters", type=int, default=None, help="Default: --max_iters.")
    p.add_argument("--min_lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--quiet", action="store_true", help="Print only the evaluations and the final JSON line.")
    return p.parse_args()


def main():
    a = parse_args()
    lr_decay_iters = a.lr_decay_iters or a.max_iters
    torch.manual_seed(a.seed)
    device = "cpu"

    # data/shakespeare_char/prepare.py, in memory
    with open(a.corpus, "r", encoding="utf-8") as f:
        data = f.read()
    if a.max_chars:
        data = data[:a.max_chars]
    chars = sorted(set(data))
    stoi = {ch: i for i, ch in enumerate(chars)}
    n = len(data)
    train_data = np.array([stoi[c] for c in data[:int(n * 0.9)]], dtype=np.uint16)
    val_data = np.array([stoi[c] for c in data[int(n * 0.9):]], dtype=np.uint16)
    print(f"vocab size {len(chars)}, train has {len(train_data):,} tokens, val has {len(val_data):,} tokens")

    def get_batch(split):
        d = train_data if split == "train" else val_data
        ix = torch.randint(len(d) - a.block_size, (a.batch_size,))
        x = torch.stack([torch.from_numpy((d[i:i + a.block_size]).astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy((d[i + 1:i + 1 + a.block_size]).astype(np.int64)) for i in ix])
        return x.to(device), y.to(device)

    config = dict(n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd, block_size=a.block_size, bias=a.bias,
                  vocab_size=len(chars), dropout=a.dropout)
    model = GPT(config).to(device)
    optimizer = model.configure_optimizers(a.weight_decay, a.learning_rate, (a.beta1, a.beta2))

    @torch.no_grad()
    def estimate_loss():
        out = {}
        model.eval()
        for split in ["train", "val"]:
            losses = torch.zeros(a.eval_iters)
            for k in range(a.eval_iters):
                X, Y = get_batch(split)
                _, loss = model(X, Y)
                losses[k] = loss.item()
            out[split] = losses.mean().item()
        model.train()
        return out

    def get_lr(it):
        if it < a.warmup_iters:
            return a.learning_rate * (it + 1) / (a.warmup_iters + 1)
        if it > lr_decay_iters:
            return a.min_lr
        decay_ratio = (it - a.warmup_iters) / (lr_decay_iters - a.warmup_iters)
        coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
        return a.min_lr + coeff * (a.learning_rate - a.min_lr)

    iter_num, losses, evaluations = 0, {}, []
    X, Y = get_batch("train")
    loop_start = t0 = time.time()
    while True:
        lr = get_lr(iter_num)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        if iter_num % a.eval_interval == 0:
            losses = estimate_loss()
            evaluations.append({"iter": iter_num, **losses})
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
        _, loss = model(X, Y)
        X, Y = get_batch("train")
        loss.backward()
        if a.grad_clip != 0.0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t1 = time.time()
        dt, t0 = t1 - t0, t1
        if iter_num % a.log_interval == 0:
            lossf = loss.item()
            if not a.quiet:
                print(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms")
        iter_num += 1
        if iter_num > a.max_iters:
            break

    now = time.time()
    updates = a.max_iters + 1
    print(json.dumps({
        "train_loss": round(losses["train"], 4), "val_loss": round(losses["val"], 4), "iters": updates,
        "vocab_size": len(chars), "loop_s": round(now - loop_start, 2), "wall_s": round(now - _PROCESS_START, 2),
        "tokens_per_s": round(updates * a.batch_size * a.block_size / (now - loop_start), 1),
        "torch_threads": torch.get_num_threads(), "evaluations": evaluations}))


if __name__ == "__main__":
    main()
