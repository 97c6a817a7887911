//! Runs compiled flow modules in wasmtime.
//!
//! One [`Host`] (a shared `Engine` and `Linker`) loads modules through a
//! cache of natively precompiled code beside each `.wasm`
//! (`<name>.<compat>-<sha256>.cwasm`, keyed by `Engine::precompile_compatibility_hash`
//! and the module's content,
//! loaded with `Module::deserialize_file`), checks the exported ABI version,
//! and makes [`Instance`]s from an `InstancePre`: one warm instance is meant
//! to serve many batches. Guests get the five WASI preview-1 imports they use
//! (random bytes, an empty environment, writes captured for messages, exit)
//! and nothing else: no files, no clocks, no network. Knows nothing of
//! PostgreSQL.
//!
//! Limits per instance: a memory cap (`StoreLimits`) and a deadline per call
//! (epoch interruption: a thread ticks the engine's epoch every
//! [`EPOCH_TICK`]; a guest still running after [`Host::batch_deadline`] is
//! stopped with [`HostError::Deadline`]). After any trap an instance is
//! poisoned: make a new one. No fuel metering (it costs throughput on every
//! call; the deadline bounds runaway guests).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};
use wasmtime::{
    Caller, Config, Engine, InstancePre, Linker, Memory, Module, Store, StoreLimits,
    StoreLimitsBuilder, TypedFunc,
};

/// The ABI version this host speaks.
pub const ABI_VERSION: i32 = weavster_guest::ABI_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot read {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("{path} is not a Weavster flow module: {message}")]
    NotAFlow { path: PathBuf, message: String },
    #[error(
        "{path} was built for Weavster ABI v{found}, but this weavster runs ABI v{ABI_VERSION}: recompile it with `weavster compile --force`"
    )]
    AbiVersion { path: PathBuf, found: i32 },
    #[error("the flow failed to initialize: {0}")]
    Init(String),
    /// The guest trapped (a panic, out of memory, a deadline): the batch
    /// fails and the instance must be replaced.
    #[error("the flow trapped: {0}")]
    Trap(String),
    /// The guest ran past the batch deadline and was stopped; the instance
    /// must be replaced.
    #[error("the flow ran past its deadline of {0:?} and was stopped")]
    Deadline(Duration),
    /// A call on an instance that trapped before.
    #[error("this flow instance trapped earlier and cannot be used again")]
    Poisoned,
    #[error("the flow rejected the batch: {0}")]
    Batch(String),
    #[error("wasmtime: {0}")]
    Engine(String),
}

impl HostError {
    /// The instance that returned this error cannot be used again (it
    /// trapped, ran past its deadline, or had trapped before): make a new one.
    pub fn ends_instance(&self) -> bool {
        matches!(
            self,
            HostError::Trap(_) | HostError::Deadline(_) | HostError::Poisoned
        )
    }
}

/// Per-store state: resource limits and the guest's captured output.
pub struct StoreState {
    limits: StoreLimits,
    /// What the guest wrote to stdout/stderr (capped), e.g. a panic message.
    pub messages: Vec<u8>,
    rng: u64,
}

const MESSAGES_CAP: usize = 64 * 1024;

/// A shared engine and linker.
pub struct Host {
    engine: Engine,
    linker: Linker<StoreState>,
    /// Memory cap of one instance, in bytes.
    pub memory_limit: usize,
    /// How long one call (a batch, or init) may run.
    pub batch_deadline: Duration,
}

/// How often the engine's epoch advances: the deadline's resolution.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

impl Host {
    /// A host whose guests run under a deadline (the default).
    pub fn new() -> Result<Self, HostError> {
        Self::with_deadline(true)
    }

    /// `deadline: false` compiles guests without the epoch checks that
    /// enforce [`Host::batch_deadline`]: faster, but a guest that never
    /// returns holds its worker forever. Only for measuring what the checks
    /// cost (`weavster-bench`); `weavster run` always has the deadline.
    pub fn with_deadline(deadline: bool) -> Result<Self, HostError> {
        let mut config = Config::new();
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        config.epoch_interruption(deadline);
        let engine = Engine::new(&config).map_err(|e| HostError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        add_wasi_imports(&mut linker).map_err(|e| HostError::Engine(e.to_string()))?;
        if deadline {
            // Ends by itself once the engine is gone.
            let weak = engine.weak();
            std::thread::Builder::new()
                .name("weavster-epoch".into())
                .spawn(move || {
                    while let Some(engine) = weak.upgrade() {
                        engine.increment_epoch();
                        drop(engine);
                        std::thread::sleep(EPOCH_TICK);
                    }
                })
                .map_err(|e| HostError::Engine(format!("cannot start the epoch thread: {e}")))?;
        }
        Ok(Host {
            engine,
            linker,
            memory_limit: 512 << 20,
            batch_deadline: if deadline {
                Duration::from_secs(10)
            } else {
                Duration::MAX
            },
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Where the precompiled native code of these module bytes (read from
    /// `wasm`) is cached: beside the module, keyed by the engine's
    /// compatibility hash and the module's own SHA-256, so a module
    /// rebuilt in place (as `compile --force` does) never meets the native
    /// code of the old one, whatever the files' modification times say.
    pub fn precompiled_path(&self, wasm: &Path, bytes: &[u8]) -> PathBuf {
        use sha2::Digest;
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let content = sha2::Sha256::digest(bytes);
        let content: String = content[..8].iter().map(|b| format!("{b:02x}")).collect();
        wasm.with_extension(format!("{:016x}-{content}.cwasm", h.finish()))
    }

    /// Compiles `wasm` to native code and caches it, unless its native code
    /// is cached already; the native code of other contents of the same
    /// file (an earlier build) is removed. Returns the cache file.
    pub fn precompile(&self, wasm: &Path) -> Result<PathBuf, HostError> {
        let load = |path: &Path| {
            let path = path.to_path_buf();
            move |e: std::io::Error| HostError::Load {
                path,
                message: e.to_string(),
            }
        };
        let bytes = std::fs::read(wasm).map_err(load(wasm))?;
        let cwasm = self.precompiled_path(wasm, &bytes);
        if cwasm.is_file() {
            return Ok(cwasm);
        }
        let native = self
            .engine
            .precompile_module(&bytes)
            .map_err(|e| HostError::NotAFlow {
                path: wasm.to_path_buf(),
                message: e.to_string(),
            })?;
        let tmp = cwasm.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, native)
            .and_then(|()| std::fs::rename(&tmp, &cwasm))
            .map_err(load(&cwasm))?;
        remove_stale(wasm, &cwasm);
        Ok(cwasm)
    }

    /// Loads a flow module (from its precompiled cache when possible) and
    /// checks its ABI.
    pub fn load(&self, wasm: &Path) -> Result<FlowModule, HostError> {
        let cwasm = self.precompile(wasm)?;
        let module = deserialize(&self.engine, &cwasm)
            .or_else(|_| {
                // An unreadable cache entry is rebuilt once.
                let _ = std::fs::remove_file(&cwasm);
                let cwasm = self.precompile(wasm).map_err(|e| e.to_string())?;
                deserialize(&self.engine, &cwasm)
            })
            .map_err(|e| HostError::NotAFlow {
                path: wasm.to_path_buf(),
                message: e,
            })?;
        self.module(module, wasm)
    }

    /// Loads a module from wasm bytes (or text), without the cache.
    pub fn load_bytes(&self, bytes: &[u8], name: &Path) -> Result<FlowModule, HostError> {
        let module = Module::new(&self.engine, bytes).map_err(|e| HostError::NotAFlow {
            path: name.to_path_buf(),
            message: e.to_string(),
        })?;
        self.module(module, name)
    }

    fn module(&self, module: Module, path: &Path) -> Result<FlowModule, HostError> {
        let mut linker = self.linker.clone();
        linker
            .define_unknown_imports_as_traps(&module)
            .map_err(|e| HostError::NotAFlow {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| HostError::NotAFlow {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let flow = FlowModule {
            pre,
            path: path.to_path_buf(),
            memory_limit: self.memory_limit,
            deadline: self.batch_deadline,
        };
        // Check the ABI version on a throwaway instance.
        let mut store = flow.store();
        let instance = flow
            .pre
            .instantiate(&mut store)
            .map_err(|e| HostError::NotAFlow {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let version = instance
            .get_typed_func::<(), i32>(&mut store, "weavster_abi_version")
            .map_err(|_| HostError::NotAFlow {
                path: path.to_path_buf(),
                message: "it exports no `weavster_abi_version`".into(),
            })?
            .call(&mut store, ())
            .map_err(|e| HostError::NotAFlow {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        if version != ABI_VERSION {
            return Err(HostError::AbiVersion {
                path: path.to_path_buf(),
                found: version,
            });
        }
        Ok(flow)
    }
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, cwasm: &Path) -> Result<Module, String> {
    // SAFETY: `cwasm` is a file this host wrote with `Engine::precompile_module`
    // into the project's own `.weavster/target/wasm` cache, named by the
    // engine's compatibility hash; wasmtime additionally checks its header.
    unsafe { Module::deserialize_file(engine, cwasm) }.map_err(|e| e.to_string())
}

/// A loaded, ABI-checked flow module.
pub struct FlowModule {
    pre: InstancePre<StoreState>,
    path: PathBuf,
    memory_limit: usize,
    deadline: Duration,
}

impl FlowModule {
    fn store(&self) -> Store<StoreState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.memory_limit)
            .instances(1)
            .build();
        let mut store = Store::new(
            self.pre.module().engine(),
            StoreState {
                limits,
                messages: Vec::new(),
                rng: 0x5eed,
            },
        );
        store.limiter(|s| &mut s.limits);
        if self.deadline != Duration::MAX {
            store.epoch_deadline_trap();
            store.set_epoch_deadline(ticks(self.deadline));
        }
        store
    }

    /// A new instance, initialized with the target's vars.
    pub fn instantiate(&self, vars: &Map<String, Value>) -> Result<Instance, HostError> {
        let mut store = self.store();
        let trap = |e: wasmtime::Error| HostError::Trap(e.to_string());
        let instance = self.pre.instantiate(&mut store).map_err(trap)?;
        let func = |store: &mut Store<StoreState>, name: &str| {
            instance
                .get_typed_func::<i32, i32>(&mut *store, name)
                .map_err(|_| HostError::NotAFlow {
                    path: self.path.clone(),
                    message: format!("it exports no `{name}`"),
                })
        };
        let input = func(&mut store, "weavster_input")?;
        let init = func(&mut store, "weavster_init")?;
        let process = func(&mut store, "weavster_process")?;
        let output = instance
            .get_typed_func::<(), i32>(&mut store, "weavster_output")
            .map_err(|_| HostError::NotAFlow {
                path: self.path.clone(),
                message: "it exports no `weavster_output`".into(),
            })?;
        let output_len = instance
            .get_typed_func::<(), i32>(&mut store, "weavster_output_len")
            .map_err(|_| HostError::NotAFlow {
                path: self.path.clone(),
                message: "it exports no `weavster_output_len`".into(),
            })?;
        let memory =
            instance
                .get_memory(&mut store, "memory")
                .ok_or_else(|| HostError::NotAFlow {
                    path: self.path.clone(),
                    message: "it exports no memory".into(),
                })?;
        let mut inst = Instance {
            store,
            input,
            process,
            output,
            output_len,
            memory,
            deadline: self.deadline,
            poisoned: false,
        };
        let ctx = serde_json::json!({ "vars": vars }).to_string();
        let len = inst.write_input(ctx.as_bytes())?;
        let status = init.call(&mut inst.store, len).map_err(|e| inst.trap(e))?;
        if status != 0 {
            let len = inst.output_len()?;
            return Err(HostError::Init(
                String::from_utf8_lossy(&inst.read_output(len)?).to_string(),
            ));
        }
        Ok(inst)
    }
}

/// A warm instance: reuse it for many batches; replace it after a trap.
pub struct Instance {
    store: Store<StoreState>,
    input: TypedFunc<i32, i32>,
    process: TypedFunc<i32, i32>,
    output: TypedFunc<(), i32>,
    output_len: TypedFunc<(), i32>,
    memory: Memory,
    deadline: Duration,
    poisoned: bool,
}

/// Epoch ticks for a deadline (at least one).
fn ticks(d: Duration) -> u64 {
    (d.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1
}

/// A trap's message, the cause first: what the guest said (a panic's
/// message, "memory allocation of N bytes failed") and the trap's kind on
/// the first line, the wasm backtrace after it.
fn trap_message(e: &wasmtime::Error, said: &str) -> String {
    let cause = match e.downcast_ref::<wasmtime::Trap>() {
        Some(t) => t.to_string(),
        None => e.root_cause().to_string(),
    };
    let lead = if said.is_empty() {
        cause
    } else {
        format!("{said} ({cause})")
    };
    match e.downcast_ref::<wasmtime::WasmBacktrace>() {
        Some(b) => format!("{lead}\n{b}"),
        None => lead,
    }
}

impl Instance {
    fn trap(&mut self, e: wasmtime::Error) -> HostError {
        self.poisoned = true;
        if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
            return HostError::Deadline(self.deadline);
        }
        let messages = String::from_utf8_lossy(&self.store.data().messages)
            .trim()
            .to_string();
        HostError::Trap(trap_message(&e, &messages))
    }

    fn write_input(&mut self, bytes: &[u8]) -> Result<i32, HostError> {
        let len = i32::try_from(bytes.len())
            .map_err(|_| HostError::Batch("batch larger than 2 GiB".into()))?;
        let ptr = self
            .input
            .call(&mut self.store, len)
            .map_err(|e| self.trap(e))?;
        self.memory
            .write(&mut self.store, ptr as u32 as usize, bytes)
            .map_err(|e| HostError::Trap(format!("input buffer out of bounds: {e}")))?;
        Ok(len)
    }

    fn read_output(&mut self, len: usize) -> Result<Vec<u8>, HostError> {
        let ptr = self
            .output
            .call(&mut self.store, ())
            .map_err(|e| self.trap(e))? as u32 as usize;
        let data = self.memory.data(&self.store);
        data.get(ptr..ptr + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| HostError::Trap("output buffer out of bounds".into()))
    }

    /// Runs one encoded batch (`weavster_guest::abi::encode_batch`); returns
    /// the encoded outcomes.
    pub fn process(&mut self, batch: &[u8]) -> Result<Vec<u8>, HostError> {
        if self.poisoned {
            return Err(HostError::Poisoned);
        }
        if self.deadline != Duration::MAX {
            self.store.set_epoch_deadline(ticks(self.deadline));
        }
        let len = self.write_input(batch)?;
        let n = self
            .process
            .call(&mut self.store, len)
            .map_err(|e| self.trap(e))?;
        if n < 0 {
            let len = self.output_len()?;
            return Err(HostError::Batch(
                String::from_utf8_lossy(&self.read_output(len)?).to_string(),
            ));
        }
        self.read_output(n as usize)
    }

    fn output_len(&mut self) -> Result<usize, HostError> {
        let n = self
            .output_len
            .call(&mut self.store, ())
            .map_err(|e| self.trap(e))?;
        Ok(n.max(0) as usize)
    }

    /// What the guest wrote to stdout/stderr so far (e.g. panic messages).
    pub fn messages(&self) -> String {
        String::from_utf8_lossy(&self.store.data().messages).to_string()
    }
}

fn add_wasi_imports(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    const M: &str = "wasi_snapshot_preview1";
    fn mem(caller: &mut Caller<'_, StoreState>) -> Option<Memory> {
        caller.get_export("memory").and_then(|e| e.into_memory())
    }
    linker.func_wrap(
        M,
        "random_get",
        |mut caller: Caller<'_, StoreState>, buf: i32, len: i32| -> i32 {
            let Some(memory) = mem(&mut caller) else {
                return 8;
            };
            let mut bytes = vec![0u8; len.max(0) as usize];
            let mut x = caller.data().rng;
            for b in &mut bytes {
                // xorshift64: deterministic, which keeps runs reproducible.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            caller.data_mut().rng = x;
            match memory.write(&mut caller, buf as u32 as usize, &bytes) {
                Ok(()) => 0,
                Err(_) => 21, // EFAULT
            }
        },
    )?;
    linker.func_wrap(
        M,
        "environ_sizes_get",
        |mut caller: Caller<'_, StoreState>, count: i32, size: i32| -> i32 {
            let Some(memory) = mem(&mut caller) else {
                return 8;
            };
            let zero = 0u32.to_le_bytes();
            let ok = memory
                .write(&mut caller, count as u32 as usize, &zero)
                .is_ok()
                && memory
                    .write(&mut caller, size as u32 as usize, &zero)
                    .is_ok();
            if ok { 0 } else { 21 }
        },
    )?;
    linker.func_wrap(
        M,
        "environ_get",
        |_: Caller<'_, StoreState>, _environ: i32, _buf: i32| -> i32 { 0 },
    )?;
    linker.func_wrap(
        M,
        "fd_write",
        |mut caller: Caller<'_, StoreState>,
         _fd: i32,
         iovs: i32,
         iovs_len: i32,
         nwritten: i32|
         -> i32 {
            let Some(memory) = mem(&mut caller) else {
                return 8;
            };
            let mut total = 0u32;
            let mut captured = Vec::new();
            for i in 0..iovs_len.max(0) as usize {
                let mut iov = [0u8; 8];
                if memory
                    .read(&caller, iovs as u32 as usize + i * 8, &mut iov)
                    .is_err()
                {
                    return 21;
                }
                let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]) as usize;
                let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]) as usize;
                let data = memory.data(&caller);
                if let Some(bytes) = data.get(ptr..ptr + len) {
                    captured.extend_from_slice(bytes);
                }
                total = total.wrapping_add(len as u32);
            }
            let messages = &mut caller.data_mut().messages;
            let room = MESSAGES_CAP.saturating_sub(messages.len());
            messages.extend_from_slice(&captured[..captured.len().min(room)]);
            match memory.write(&mut caller, nwritten as u32 as usize, &total.to_le_bytes()) {
                Ok(()) => 0,
                Err(_) => 21,
            }
        },
    )?;
    linker.func_wrap(
        M,
        "proc_exit",
        |_: Caller<'_, StoreState>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!(
                "the guest exited with code {code}"
            )))
        },
    )?;
    Ok(())
}

/// Removes the cached native code of earlier contents of `wasm`
/// (`<stem>.*.cwasm` other than `keep`). Best effort: a file another
/// process still has mapped stays readable to it until it unmaps it.
fn remove_stale(wasm: &Path, keep: &Path) {
    let (Some(dir), Some(stem)) = (wasm.parent(), wasm.file_stem().and_then(|s| s.to_str())) else {
        return;
    };
    let prefix = format!("{stem}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if path != keep
            && name.starts_with(&prefix)
            && name.ends_with(".cwasm")
            && !name[prefix.len()..name.len() - ".cwasm".len()].contains('.')
        {
            let _ = std::fs::remove_file(&path);
        }
    }
}
