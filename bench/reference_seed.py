#!/usr/bin/env python3
"""The reference for bench/train_throughput.py: the seed project's single-machine pipeline in plain
PyTorch. A torch.utils.data.Dataset over the same IDX files, per-sample normalisation (what
torchvision's Normalize does), a DataLoader, the classic MNIST CNN, Adam. No torchvision.

Prints one JSON object: per-epoch training throughput and mean training loss, and the final test
accuracy. With --phases, each epoch also says where a step's time went (milliseconds per step):
gather (the DataLoader's next batch), forward (model and loss), backward (zero_grad and
backward), step (the optimiser and reading the loss), as trainfleet's TRAINFLEET_PROFILE_PHASES
splits its step.
"""
import argparse
import gzip
import json
import struct
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset


def read_idx(path: Path) -> torch.Tensor:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ndims = raw[3]
    dims = struct.unpack(">" + "I" * ndims, raw[4 : 4 + 4 * ndims])
    return torch.frombuffer(bytearray(raw[4 + 4 * ndims :]), dtype=torch.uint8).reshape(dims)


class IdxDataset(Dataset):
    def __init__(self, images, labels, mean, std):
        self.images, self.labels, self.mean, self.std = images, labels.long(), mean, std

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i].float().div(255.0).unsqueeze(0)
        return (x - self.mean) / self.std, self.labels[i]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return self.fc2(x)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--phases", action="store_true", help="time each phase of a step")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    train_x, train_y = read_idx(a.data / "train-images-idx3-ubyte"), read_idx(a.data / "train-labels-idx1-ubyte")
    test_x, test_y = read_idx(a.data / "t10k-images-idx3-ubyte"), read_idx(a.data / "t10k-labels-idx1-ubyte")
    mean = train_x.float().div(255).mean().item()
    std = train_x.float().div(255).std().item()
    train = DataLoader(IdxDataset(train_x, train_y, mean, std), batch_size=a.batch_size, shuffle=True)
    test = DataLoader(IdxDataset(test_x, test_y, mean, std), batch_size=512)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    epochs = []
    for epoch in range(1, a.epochs + 1):
        model.train()
        start = time.perf_counter()
        seen = 0
        loss_sum = 0.0
        phases = [0.0, 0.0, 0.0, 0.0]
        clock = time.perf_counter
        batches = iter(train)
        steps = 0
        while True:
            t0 = clock()
            try:
                x, y = next(batches)
            except StopIteration:
                break
            t1 = clock()
            out = model(x)
            loss = F.cross_entropy(out, y)
            t2 = clock()
            opt.zero_grad()
            loss.backward()
            t3 = clock()
            opt.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            t4 = clock()
            steps += 1
            if a.phases:
                for i, d in enumerate((t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    phases[i] += d
        seconds = time.perf_counter() - start
        epochs.append({"epoch": epoch, "images_per_sec": seen / seconds, "train_seconds": seconds,
                       "train_loss": loss_sum / seen})
        if a.phases:
            names = ("gather", "forward", "backward", "step")
            epochs[-1]["phases_ms"] = {n: 1e3 * t / steps for n, t in zip(names, phases)}
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test:
            correct += (model(x).argmax(1) == y).sum().item()
    print(json.dumps({"epochs": epochs, "test_accuracy": correct / len(test_y), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
