"""The timing the side-by-side benchmarks share: training steps run in turn on the same batches (so load from
other processes hits each alike), one warm-up round, then the median step of each as images per second."""
import statistics
import time

import torch


def interleaved(steps, rounds, device, clock=time.perf_counter):
    """{name: seconds of each timed step}: `steps` is {name: (step, inputs)}; round i feeds each step its inputs[i
    % len(inputs)], in turn; round 0 warms up and is not timed. CUDA steps are timed to the GPU's end."""
    seconds = {name: [] for name in steps}
    for i in range(rounds + 1):
        for name, (step, inputs) in steps.items():
            start = clock()
            step(inputs[i % len(inputs)])
            if device.type == 'cuda':
                torch.cuda.synchronize()
            if i:
                seconds[name].append(clock() - start)
    return seconds


def speeds(seconds, batch_size, digits=2):
    """Print each step's times; return {name: images/s of its median step}."""
    for name, times in seconds.items():
        print(f'{name}: ' + ' '.join(f'{t:.{digits}f}' for t in times) + ' s/step')
    return {name: batch_size / statistics.median(times) for name, times in seconds.items()}
