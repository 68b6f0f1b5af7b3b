//! llama.cpp's loader, probed with corrupted copies of the real model.
//!
//! What the probing found (a copy of the model with one field changed,
//! about 770 variants: every key's value type, counts and lengths, array
//! item types, key values, token texts and types, merges, tensor dimension
//! counts, dimensions, types and offsets, tensor data, and truncations from
//! byte 1 to the last byte; then 250 random changes of 1 to 8 bytes):
//!
//! - Most corruptions are refused with an error: the layout ones by
//!   talkback's own walk of the header (`host-cli/src/gguf.rs`), the rest
//!   by llama.cpp (shapes, sizes, unknown types and names) or, for NaN
//!   weights, by the check of every step's logits for NaN.
//! - Five made llama.cpp abort the process (SIGABRT from `GGML_ASSERT`):
//!   `llama.block_count` of 0 or above 512; a NaN or negative
//!   `llama.attention.layer_norm_rms_epsilon` (at the first decode);
//!   `tokenizer.ggml.model` = `none` (at the first tokenization); two
//!   tokens with the same text; and a one-dimensional tensor (a norm
//!   weight) stored as anything but F32, which the CPU backend cannot
//!   multiply by. The walk now refuses all five first.
//! - `tokenizer.ggml.model` = `rwkv` on this llama model loads, and the
//!   first text that is not ASCII sends llama.cpp's RWKV tokenizer into a
//!   loop that fills memory until the process aborts; the walk refuses
//!   the RWKV tokenizer outside RWKV architectures.
//! - Many values llama.cpp accepts without complaint and runs with: a
//!   changed context length, vocabulary size, BOS/EOS ids out of range,
//!   token texts that are not UTF-8, broken merges. Those runs exit 0.
//!   Of those, a token type outside 0 to 6 made every such token print
//!   nothing (llama.cpp treats it as a control token); the walk refuses
//!   it.
//! - A later round looked for such silent runs on purpose (about 130
//!   copies). Refused now, each with the value that is wrong: an end id
//!   naming ordinary text (`eos_token_id` = 30, `.`, ended every reply at
//!   the first full stop) or outside the vocabulary; a merge list cut short
//!   or a merge that makes no token; a word a merge makes typed as one that
//!   prints nothing; a byte token whose text is not `<0xHH>`; an epsilon of
//!   1 or more; a rope base that is not finite and positive; a negative
//!   rope scaling factor; `attention.causal` false. Still run, since the
//!   file alone cannot tell: swapped token texts, another pre-tokenizer,
//!   consistent but wrong head counts.
//!
//! The tests below pin the five abort cases, truncation at many points,
//! corrupt tensor data, and a sweep of single-byte changes over the
//! header; every run must end with an exit code and, on failure, one line.

// Helpers outside `#[test]` functions stop the test with a message on any
// surprise, as the tests themselves do.
#![allow(clippy::panic, clippy::expect_used, clippy::indexing_slicing)]

mod reliability_support;

use reliability_support::{
    arg, command, no_crash, runtime_error, start, talkback, Layout, Patchable, Run, Scratch,
    DEADLINE,
};

/// A short completion with `model`.
fn complete_with(model: &std::path::Path) -> Run {
    talkback(&[
        "complete",
        "The cat sat",
        "-n",
        "2",
        "--seed",
        "1",
        "-c",
        "64",
        "-m",
        arg(model),
    ])
}

/// Bytes to write over the copy, each at its offset.
type Patches = Vec<(u64, Vec<u8>)>;

fn u32_bytes(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

#[test]
fn corruptions_llama_cpp_aborts_on_are_refused_first() {
    let scratch = Scratch::new("aborts");
    let layout = Layout::of_model();
    let copy = Patchable::new(&scratch);
    let blocks = layout.value_at("llama.block_count");
    let eps = layout.value_at("llama.attention.layer_norm_rms_epsilon");
    // The string's bytes follow its 8-byte length; "gpt2" becomes "none".
    let tokenizer = layout.value_at("tokenizer.ggml.model") + 8;
    assert_eq!(layout.bytes(tokenizer, 4), b"gpt2", "the model's tokenizer");
    let norm = layout.tensor("output_norm.weight").type_at;
    // The types follow the array's item type and count.
    let type_of_1000 = layout.value_at("tokenizer.ggml.token_type") + 12 + 4 * 1000;
    // The comma, which merges join into longer tokens but none makes.
    let type_of_comma = layout.value_at("tokenizer.ggml.token_type") + 12 + 4 * 28;
    assert_eq!(
        layout.bytes(type_of_1000, 4),
        u32_bytes(1),
        "a normal token"
    );
    let eos = layout.value_at("tokenizer.ggml.eos_token_id");
    let base = layout.value_at("llama.rope.freq_base");

    // Two neighbouring tokens of equal length, the second made a copy.
    let (first, second) = (100..2000)
        .map(|i| (layout.token_text(i), layout.token_text(i + 1)))
        .find(|((_, a), (_, b))| a == b)
        .expect("two neighbouring tokens of equal length");
    let text = layout.bytes(first.0, first.1).to_vec();

    let cases: Vec<(Patches, &str)> = vec![
        (vec![(blocks, u32_bytes(0))], "`llama.block_count` is 0"),
        (
            vec![(blocks, u32_bytes(1000))],
            "`llama.block_count` is 1000",
        ),
        (
            vec![(eps, f32::NAN.to_le_bytes().to_vec())],
            "`llama.attention.layer_norm_rms_epsilon` is NaN",
        ),
        (
            vec![(eps, (-1.0_f32).to_le_bytes().to_vec())],
            "`llama.attention.layer_norm_rms_epsilon` is -1",
        ),
        (vec![(tokenizer, b"none".to_vec())], "has no tokenizer"),
        (
            vec![(tokenizer, b"rwkv".to_vec())],
            "`rwkv`, which only RWKV models use, but the architecture is `llama`",
        ),
        (vec![(second.0, text)], "twice"),
        (
            vec![(norm, u32_bytes(1))],
            "`output_norm.weight` is one-dimensional and F16",
        ),
        (
            vec![(norm, u32_bytes(26))],
            "`output_norm.weight` is one-dimensional and I32",
        ),
        (
            vec![(type_of_1000, u32_bytes(9))],
            "token 1000 has type 9; GGUF token types are 0 to 6",
        ),
        (
            vec![(type_of_1000, u32_bytes(3))],
            "is made by a merge, so it is text, but its type (3)",
        ),
        (
            vec![(type_of_comma, u32_bytes(3))],
            "token 28 (\",\") is joined by a merge, so it is text, but its type (3)",
        ),
        (
            vec![(eos, u32_bytes(30))],
            "`tokenizer.ggml.eos_token_id` is 30, the ordinary text \".\"",
        ),
        (
            vec![(eos, u32_bytes(49_152))],
            "`tokenizer.ggml.eos_token_id` is 49152, outside the vocabulary",
        ),
        (
            vec![(eps, f32::INFINITY.to_le_bytes().to_vec())],
            "`llama.attention.layer_norm_rms_epsilon` is inf; it must be at least 0 and below 1",
        ),
        (
            vec![(base, f32::INFINITY.to_le_bytes().to_vec())],
            "`llama.rope.freq_base` is inf; it must be a finite number above 0",
        ),
    ];
    for (patches, needle) in cases {
        let run = copy.with(&patches, complete_with);
        let line = runtime_error(&run, needle);
        assert!(line.contains("is not a usable GGUF file"), "{line}");
    }
}

#[test]
fn a_turn_marker_typed_as_text_is_refused_by_chat() {
    // `<|im_start|>` typed normal: the template's markers split into
    // pieces, and the model answered as if it were the user.
    let scratch = Scratch::new("marker-as-text");
    let layout = Layout::of_model();
    let copy = Patchable::new(&scratch);
    let type_of_1 = layout.value_at("tokenizer.ggml.token_type") + 12 + 4;
    assert_eq!(layout.bytes(type_of_1, 4), u32_bytes(3), "a control token");
    let run = copy.with(&[(type_of_1, u32_bytes(1))], |model| {
        talkback(&["chat", "Say hi", "-n", "2", "-t", "1", "-m", arg(model)])
    });
    runtime_error(
        &run,
        "the chat template writes \"<|im_start|>\", the text of token 1, which marks \
         turns, but the model's vocabulary does not read it as that token",
    );
}

#[test]
fn a_model_file_written_over_moved_or_deleted_during_a_run_changes_nothing() {
    // The weights were mapped from the file: a copy written over it stopped
    // talkback with SIGBUS, and the trace's SHA-256 was taken of whatever
    // the path named at the end, or failed once nothing did.
    let scratch = Scratch::new("model-during-run");
    let layout = Layout::of_model();
    let norm = layout.tensor("output_norm.weight");
    let other = scratch.model_with("other.gguf", &[(layout.data_start + norm.offset, &[0; 64])]);
    let other = std::fs::read(other).expect("the changed copy");
    let run = |name: &str, meddle: &dyn Fn(&std::path::Path)| {
        let live = scratch.model_with(name, &[]);
        let dump = scratch.join(&format!("{name}.dump"));
        let trace = scratch.join(&format!("{name}.json"));
        let running = start(
            command(&[
                "complete",
                "Once upon a time",
                "-n",
                "200",
                "--ignore-eos",
                "--seed",
                "1",
                "-t",
                "1",
                "-m",
                arg(&live),
                "--dump-logits",
                arg(&dump),
                "--trace",
                arg(&trace),
            ]),
            None,
        );
        // One record of logits a step: the model is loaded and decoding.
        let started = std::time::Instant::now();
        while std::fs::metadata(&dump).map_or(0, |m| m.len()) < 2 * 49_152 * 4 {
            assert!(started.elapsed() < DEADLINE, "generation never started");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        meddle(&live);
        let run = running.finish();
        assert_eq!(run.code, 0, "{name}: {}", run.stderr);
        let steps = std::fs::metadata(&dump).map_or(0, |m| m.len()) / (49_152 * 4);
        assert_eq!(steps, 200, "{name}: the run went on to its end");
        let text = std::fs::read_to_string(&trace).expect("the trace");
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        (
            run.stdout,
            v["model_sha256"].as_str().expect("sha").to_owned(),
        )
    };
    let (text, sha) = run("untouched.gguf", &|_| {});
    assert!(sha.starts_with("b179c952"), "{sha}");
    let written_over = |live: &std::path::Path| std::fs::write(live, &other).expect("write");
    let replaced = |live: &std::path::Path| {
        let new = scratch.join("new.gguf");
        std::fs::write(&new, &other).expect("write");
        std::fs::rename(new, live).expect("move over");
    };
    let deleted = |live: &std::path::Path| std::fs::remove_file(live).expect("delete");
    for (name, meddle) in [
        (
            "written-over.gguf",
            &written_over as &dyn Fn(&std::path::Path),
        ),
        ("replaced.gguf", &replaced),
        ("deleted.gguf", &deleted),
    ] {
        assert_eq!(run(name, meddle), (text.clone(), sha.clone()), "{name}");
    }
}

#[test]
fn a_prompt_that_starts_with_the_bos_gets_no_second_one() {
    // With `add_bos_token` set, `complete --parse-special` put the model's
    // BOS (`<|im_start|>` here) before a prompt that already opens with it.
    let scratch = Scratch::new("bos-wanted");
    let layout = Layout::of_model();
    let copy = Patchable::new(&scratch);
    let add_bos = layout.value_at("tokenizer.ggml.add_bos_token");
    assert_eq!(layout.bytes(add_bos, 1), [0], "SmolLM2 adds no BOS");
    let trace = scratch.join("trace.json");
    let run_ids = |args: &[&str]| {
        let run = copy.with(&[(add_bos, vec![1])], |model| {
            let flags = [
                "-n",
                "1",
                "--temp",
                "0",
                "-t",
                "1",
                "-m",
                arg(model),
                "--trace",
                arg(&trace),
            ];
            talkback(&[args, &flags[..]].concat())
        });
        assert_eq!(run.code, 0, "{}", run.stderr);
        reliability_support::trace_prompt_ids(&trace)
    };
    let ids = |prompt: &str, special: bool| {
        let special: &[&str] = if special { &["--parse-special"] } else { &[] };
        run_ids(&[&["complete", prompt], special].concat())
    };
    let hi = ids("Hi", true);
    assert_eq!(hi[0], 1, "the BOS is added: {hi:?}");
    assert_eq!(ids("<|im_start|>Hi", true), hi);
    // Two written are two sent; as text, the marker is not a BOS.
    assert_eq!(
        ids("<|im_start|><|im_start|>Hi", true),
        [&[1], &hi[..]].concat()
    );
    let typed = ids("<|im_start|>Hi", false);
    assert!(
        typed.len() > 3 && typed[0] == 1 && typed[1] != 1,
        "{typed:?}"
    );

    // In a chat, a message that opens the prompt with the BOS's text is
    // text: the BOS is still added before it.
    let bare = scratch.write(
        "bare.jinja",
        b"{% for m in messages %}{{ m.content }}\n{% endfor %}",
    );
    let chat = |message: &str| run_ids(&["chat", message, "--chat-template", arg(&bare)]);
    let hello = chat("Hello");
    assert_eq!(hello[0], 1, "{hello:?}");
    let marker = chat("<|im_start|>Hello");
    assert!(
        marker[0] == 1 && marker[1] != 1 && marker.len() > hello.len() + 2,
        "{marker:?} against {hello:?}"
    );

    // `--render-only` shows the BOS the vocabulary adds, as the model reads
    // it, and shows one the template writes once.
    let opened = scratch.write(
        "opened.jinja",
        b"{{ bos_token }}{% for m in messages %}{{ m.content }}\n{% endfor %}",
    );
    let shown = copy.with(&[(add_bos, vec![1])], |model| {
        [&bare, &opened].map(|template| {
            let run = talkback(&[
                "chat",
                "Hello",
                "--chat-template",
                arg(template),
                "--render-only",
                "-m",
                arg(model),
            ]);
            assert_eq!(run.code, 0, "{}", run.stderr);
            run.text().to_owned()
        })
    });
    assert_eq!(shown, ["<|im_start|>Hello\n", "<|im_start|>Hello\n"]);

    // A vocabulary that adds an EOS as well put it after the chat's BOS,
    // ending the conversation before its first turn, and at the end of a
    // completion's prompt, which the model then took as over.
    const BOOL: u32 = 7;
    let both = scratch.model_with_key(
        "both.gguf",
        &[(add_bos, &[1])],
        ("tokenizer.ggml.add_eos_token", BOOL, &[1]),
    );
    let ids_with_eos_too = |args: &[&str]| {
        let flags = [
            "-n",
            "1",
            "--temp",
            "0",
            "-t",
            "1",
            "-m",
            arg(&both),
            "--trace",
            arg(&trace),
        ];
        let run = talkback(&[args, &flags[..]].concat());
        assert_eq!(run.code, 0, "{}", run.stderr);
        reliability_support::trace_prompt_ids(&trace)
    };
    assert_eq!(
        ids_with_eos_too(&["chat", "Hello", "--chat-template", arg(&bare)]),
        hello
    );
    assert_eq!(ids_with_eos_too(&["complete", "Hi", "--parse-special"]), hi);
    assert_eq!(
        ids_with_eos_too(&["complete", "<|im_start|>Hi", "--parse-special"]),
        hi
    );
}

#[test]
fn the_default_context_is_the_trained_one_when_that_is_shorter() {
    // A model trained on 2048 tokens needed --ctx-size on every run.
    let scratch = Scratch::new("trained-2048");
    let layout = Layout::of_model();
    let copy = Patchable::new(&scratch);
    let trained = layout.value_at("llama.context_length");
    let (plain, asked) = copy.with(&[(trained, u32_bytes(2048))], |model| {
        let run = |extra: &[&str]| {
            let args = [
                &["complete", "hi", "-n", "1", "-t", "1", "-m", arg(model)],
                extra,
            ];
            talkback(&args.concat())
        };
        (run(&["-v"]), run(&["-c", "4096"]))
    });
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    assert!(plain.stderr.contains("| ctx 2048 |"), "{}", plain.stderr);
    let line = runtime_error(&asked, "a context of 4096 tokens is more than the 2048");
    assert!(line.ends_with("pass --ctx-size 2048 or less"), "{line}");

    // Trained on fewer tokens than any context talkback runs: the model is
    // at fault, not the default context nobody asked for.
    let tiny = copy.with(&[(trained, u32_bytes(10))], |model| {
        talkback(&["complete", "hi", "-n", "1", "-t", "1", "-m", arg(model)])
    });
    let line = runtime_error(
        &tiny,
        "was trained on a context of 10 tokens; talkback needs",
    );
    assert!(!line.contains("4096"), "{line}");

    // A length of 0 says nothing: the run goes on, with any context asked
    // for, but not without a word that none can be checked.
    let unknown = copy.with(&[(trained, u32_bytes(0))], |model| {
        talkback(&[
            "complete",
            "hi",
            "-n",
            "1",
            "-t",
            "1",
            "-c",
            "9000",
            "-m",
            arg(model),
        ])
    });
    assert_eq!(unknown.code, 0, "{}", unknown.stderr);
    assert_eq!(unknown.stderr.lines().count(), 1, "{}", unknown.stderr);
    assert!(
        unknown.stderr.starts_with("talkback: warning: model ")
            && unknown.stderr.ends_with(
                ": its context length is 0, so a context of 9000 tokens cannot be held to \
                 the one it was trained on\n"
            ),
        "{}",
        unknown.stderr
    );
}

#[test]
fn truncation_at_many_points_is_refused() {
    let scratch = Scratch::new("cuts");
    let layout = Layout::of_model();
    let header = layout.data_start;
    let mut cuts: Vec<u64> = (1..40).map(|i| header * i / 40).collect();
    cuts.extend([1, 4, 8, 16, 24, header - 1, header, header + 1]);
    cuts.extend([layout.len / 3, layout.len - 4096, layout.len - 1]);
    for cut in cuts {
        let path = scratch.model_prefix("cut.gguf", cut);
        let run = complete_with(&path);
        let line = runtime_error(&run, "is not a usable GGUF file");
        assert!(!line.contains("null result"), "cut at {cut}: {line}");
    }
}

#[test]
fn corrupt_tensor_data_is_an_error_or_a_result_not_a_crash() {
    let scratch = Scratch::new("data");
    let layout = Layout::of_model();
    let copy = Patchable::new(&scratch);
    let norm = layout.tensor("output_norm.weight");
    let norm_data = layout.data_start + norm.offset;

    // All-ones bytes are NaN as f32: every logit comes out NaN.
    let run = copy.with(&[(norm_data, vec![0xff; 576 * 4])], complete_with);
    let line = runtime_error(&run, "NaN for 49152 of its 49152 logits at step 0");
    assert!(line.contains("(token 0 first)"), "{line}");

    // A flipped byte in the embeddings changes numbers, not the outcome.
    let embd = layout.data_start + layout.tensor("token_embd.weight").offset + 4096;
    let run = copy.with(&[(embd, vec![0x5a])], complete_with);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert!(!run.stdout.is_empty());
}

#[test]
fn single_byte_changes_across_the_header_never_crash() {
    let scratch = Scratch::new("sweep");
    let layout = Layout::of_model();
    let copy = Patchable::new(&scratch);
    // The header without the vocabulary's bulk (its strings and merges
    // are covered by the cases above) plus the tensor descriptions.
    let vocab = layout.value_at("tokenizer.ggml.tokens");
    let tail = layout.key_type_at("tokenizer.ggml.bos_token_id") - 40;
    let regions = [(0, vocab + 64), (tail, layout.data_start)];

    // A fixed linear congruential sequence: the same sweep every run.
    let mut state: u64 = 0x7a1c_bacc;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 33
    };
    let mut exits = [0_usize; 2];
    for i in 0..48 {
        let (start, end) = regions[i % 2];
        let at = start + next() % (end - start);
        let value = [0x00, 0xff, 0x7f, 0x80][(next() % 4) as usize];
        let run = copy.with(&[(at, vec![value])], complete_with);
        no_crash(&run.stderr);
        match run.code {
            0 => exits[0] += 1,
            1 => {
                let lines = run.stderr.lines().filter(|l| !l.is_empty()).count();
                assert_eq!(lines, 1, "byte {at} = {value:#x}: {}", run.stderr);
                exits[1] += 1;
            }
            code => panic!("byte {at} = {value:#x}: exit {code}; {}", run.stderr),
        }
    }
    // Both outcomes occur: the sweep reaches llama.cpp, not only the walk.
    assert!(exits[0] > 0 && exits[1] > 0, "exits 0/1: {exits:?}");
}

#[test]
fn a_few_nan_logits_are_refused_not_passed_over() {
    let scratch = Scratch::new("nan-rows");
    let layout = Layout::of_model();
    let copy = Patchable::new(&scratch);
    // The output shares the token embeddings: a NaN scale in one block of
    // a token's row makes that token's logit NaN and leaves the others
    // alone (the prompt's own tokens are not touched).
    let embd = layout.tensor("token_embd.weight");
    let le_u32 = |at: u64| u32::from_le_bytes(layout.bytes(at, 4).try_into().expect("4 bytes"));
    let le_u64 = |at: u64| u64::from_le_bytes(layout.bytes(at, 8).try_into().expect("8 bytes"));
    assert_eq!(
        le_u32(embd.type_at),
        8,
        "token_embd.weight is no longer Q8_0"
    );
    let width = le_u64(embd.n_dims_at + 4);
    // Q8_0: blocks of 32 weights, each an f16 scale and 32 bytes.
    let row = width / 32 * 34;
    let nan_scale = vec![0x00, 0x7e];
    let rows = [45_000u64, 40_000];
    let patches: Vec<(u64, Vec<u8>)> = rows
        .iter()
        .map(|r| (layout.data_start + embd.offset + r * row, nan_scale.clone()))
        .collect();
    let run = copy.with(&patches, complete_with);
    let line = runtime_error(
        &run,
        "the model gave NaN for 2 of its 49152 logits at step 0",
    );
    assert!(line.contains("(token 40000 first)"), "{line}");
    assert!(run.stdout.is_empty(), "stdout: {:?}", run.text());

    let run = copy.with(&patches, |model| {
        talkback(&["shape", "The cat sat", "-c", "64", "-m", arg(model)])
    });
    runtime_error(
        &run,
        "NaN for 2 of its 49152 logits after the prompt (token 40000 first)",
    );
}

#[test]
fn a_failed_check_inside_llama_cpp_is_one_line_and_exit_1() {
    let scratch = Scratch::new("assert");
    let layout = Layout::of_model();
    let first = &layout.tensors[0];
    let infos = (first.n_dims_at - 8 - first.name.len() as u64) as usize;
    // An unknown rope scaling type passes llama.cpp's loader and then
    // fails a GGML_ASSERT. The pair is padded to a multiple of 32 bytes so
    // that the tensor data stays aligned.
    let key = b"llama.rope.scaling.type";
    let mut value = b"garbage".to_vec();
    let pair_len = |v: &[u8]| 8 + key.len() + 4 + 8 + v.len();
    while pair_len(&value) % 32 != 0 {
        value.push(b' ');
    }
    let model = std::fs::read(reliability_support::model()).expect("read the model");
    let mut bytes = model[..infos].to_vec();
    let n_kv = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    bytes[16..24].copy_from_slice(&(n_kv + 1).to_le_bytes());
    bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(&8_u32.to_le_bytes());
    bytes.extend_from_slice(&(value.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&value);
    bytes.extend_from_slice(&model[infos..]);
    let path = scratch.write("rope.gguf", &bytes);
    let run = complete_with(&path);
    let line = runtime_error(&run, "talkback: llama.cpp stopped on a failed check (");
    assert!(line.contains("rope_scaling_type_train"), "{line}");
    assert!(line.contains("does not hold"), "{line}");
    assert!(
        line.contains(&format!("model {} is corrupt", arg(&path))),
        "{line}"
    );
    assert!(run.stdout.is_empty(), "stdout: {:?}", run.text());
}
