// adapterlab's bridge to llama.cpp (node-llama-cpp's prebuilt CPU binaries): JSON lines on stdin, one JSON line
// of reply on stdout per request. Started by adapterlab.stages.export.llamacpp with the runtime folder, the GGUF
// (and an optional GGUF LoRA adapter) and a thread count; log lines from llama.cpp go to stderr.
//
// Requests: {"op": "score", "prompt": [ids], "continuation": [ids]} -> {"logprobs": [...], "top1": [...]}
//           {"op": "greedy", "prompt": [ids], "max_tokens": n, "stop": [ids]} -> {"tokens": [...], "text": "..."}
//           {"op": "tokenize", "text": "..."} -> {"tokens": [...]}
//           {"op": "generate", "prompts": [[ids], ...], "clients": k, "max_tokens": n, "stop": [ids]}
//               -> {"tokens": [n, ...], "texts": [...], "seconds": s}
// Any failure: {"error": "one line"}.
import { createInterface } from "node:readline";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
    options: {
        runtime: { type: "string" }, model: { type: "string" }, lora: { type: "string" },
        threads: { type: "string", default: "1" }, context: { type: "string", default: "2048" },
        sequences: { type: "string", default: "1" },
    },
});
const entry = join(args.runtime, "node_modules", "node-llama-cpp", "dist", "index.js");
const { getLlama, LlamaLogLevel } = await import(pathToFileURL(entry).href);

const threads = Number(args.threads);
// gpu: false and build: "never": the prebuilt CPU binary or nothing (never a download or a compile at run time).
const llama = await getLlama({ gpu: false, build: "never", maxThreads: threads, logLevel: LlamaLogLevel.warn,
    logger: (level, message) => process.stderr.write(`llama.cpp ${level}: ${message}\n`) });
const model = await llama.loadModel({ modelPath: args.model });
const context = await model.createContext({
    contextSize: Number(args.context), sequences: Number(args.sequences),
    // A fixed thread count: the default spin-waits for cores the machine may not have free.
    threads: { ideal: threads, min: threads },
    ...(args.lora ? { lora: { adapters: [{ filePath: args.lora }] } } : {}),
});
const sequences = Array.from({ length: Number(args.sequences) }, () => context.getSequence());

// Teacher-forced: feed prompt + continuation once; at each continuation position read llama.cpp's distribution of
// the next token (softmax of its logits, no sampling applied) for the given token and llama.cpp's own top-1.
async function score({ prompt, continuation }) {
    const sequence = sequences[0];
    await sequence.clearHistory();
    const tokens = [...prompt, ...continuation.slice(0, -1)];
    const input = tokens.map((token, i) =>
        i >= prompt.length - 1 ? [token, { generateNext: { probabilities: true } }] : token);
    const output = await sequence.controlledEvaluate(input);
    const logprobs = [], top1 = [];
    for (let i = prompt.length - 1; i < tokens.length; i++) {
        const probabilities = output[i].next.probabilities; // sorted, most likely first
        const target = continuation[i - prompt.length + 1];
        logprobs.push(Math.log(probabilities.get(target) ?? 0));
        top1.push(probabilities.keys().next().value);
    }
    return { logprobs, top1 };
}

async function greedy({ prompt, max_tokens, stop }) {
    const sequence = sequences[0];
    await sequence.clearHistory();
    const tokens = [];
    for await (const token of sequence.evaluate(prompt, { temperature: 0 })) {
        tokens.push(token);
        if (stop.includes(token) || tokens.length >= max_tokens) break;
    }
    return { tokens, text: model.detokenize(tokens.filter((t) => !stop.includes(t))) };
}

// Throughput (benchmarks/export_runtime.py): `clients` workers, each on its own sequence of the context, each
// taking its share of the prompts one at a time, greedy up to a stop token; llama.cpp batches the workers' steps.
async function generate({ prompts, clients, max_tokens, stop }) {
    const started = performance.now();
    const tokens = new Array(prompts.length), texts = new Array(prompts.length);
    await Promise.all(sequences.slice(0, clients).map(async (sequence, worker) => {
        for (let i = worker; i < prompts.length; i += clients) {
            await sequence.clearHistory();
            const reply = [];
            for await (const token of sequence.evaluate(prompts[i], { temperature: 0 })) {
                if (stop.includes(token)) break;
                reply.push(token);
                if (reply.length >= max_tokens) break;
            }
            tokens[i] = reply.length;
            texts[i] = model.detokenize(reply);
        }
    }));
    return { tokens, texts, seconds: (performance.now() - started) / 1000 };
}

const ops = {
    score, greedy, generate,
    tokenize: async ({ text }) => ({ tokens: model.tokenize(text, true) }),
};
process.stdout.write(JSON.stringify({ ready: true, threads: context.currentThreads ?? threads }) + "\n");
for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    let reply;
    try {
        const request = JSON.parse(line);
        const op = ops[request.op];
        reply = op ? await op(request) : { error: `unknown op '${request.op}'` };
    } catch (error) {
        reply = { error: String(error?.message ?? error).split("\n")[0] };
    }
    process.stdout.write(JSON.stringify(reply) + "\n");
}
await context.dispose();
await model.dispose();
