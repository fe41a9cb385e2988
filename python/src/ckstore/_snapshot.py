"""Saves without a staging copy: a training state snapshotted into shared memory, and the checkpoint's
files laid out as ranges of it for ``ckstore put --layout``.

A save has two halves (CheckFreq's snapshot and persist):

* **Snapshot** (the training loop waits): every tensor storage the state holds is copied once into an
  *arena*, a memory file (``memfd``) mapped into this process, reused from save to save, registered as
  pinned memory when CUDA is present so that copies from the GPU are DMA. The state's structure (dicts,
  lists, Python values) is copied with it by a pickle round trip whose persistent ids are the storages,
  so the copy holds snapshot tensors wherever the state held tensors, with the same sharing, and
  training may change the original at once.
* **Persist** (in the background, or at once for a foreground save): the files are serialized from the
  snapshot by the same writers a folder save uses (``torch.save``; safetensors' header), into a
  *recorder* that keeps each write that is a snapshot storage as a range of the arena and appends every
  other byte (zip headers, pickles, the safetensors header) to the memory file after the arena. The
  files are never assembled: ``ckstore put --layout`` maps the memory file and reads each file as its
  list of ranges, so the store receives the files byte for byte, and no checkpoint touches the disk
  outside the store.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import pickle
import tempfile
import threading
from typing import Any, Dict, List, Optional, Tuple

#: Where each storage starts in the arena: aligned as torch aligns its own allocations.
_ALIGNMENT = 64
#: Arenas grow in steps of this much, so that a state that grows a little reuses its arena.
_GROWTH = 2 << 20


def _torch():
    import torch

    return torch


class _PyBuffer(ctypes.Structure):
    # Python's Py_buffer (Include/pybuffer.h), to read the address of a read-only buffer.
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None


def _buffer_address(data) -> Tuple[int, int]:
    """The address and length of the bytes of a buffer (a ``memoryview`` torch's writer passes)."""
    view = _PyBuffer()
    if _get_buffer(data, ctypes.byref(view), 0) != 0:  # PyBUF_SIMPLE
        raise TypeError(f"{type(data).__name__} does not expose its bytes")
    try:
        return int(view.buf or 0), int(view.len)
    finally:
        _release_buffer(ctypes.byref(view))


class Arena:
    """A memory file mapped into this process: the snapshot's storages at the front, and a save's other
    bytes appended after them. Reused from save to save; grown when a state needs more."""

    def __init__(self):
        self.fd: Optional[int] = None
        self.map: Optional[mmap.mmap] = None
        self.capacity = 0
        self.base = 0
        self.pinned = False
        self._path: Optional[str] = None

    @property
    def source(self) -> str:
        """The path ``ckstore put`` opens: this process's descriptor, passed on to it."""
        return self._path if self._path is not None else f"/proc/self/fd/{self.fd}"

    @property
    def pass_fds(self) -> Tuple[int, ...]:
        return () if self._path is not None else (self.fd,)

    def reserve(self, size: int, pin: bool) -> None:
        """Makes room for ``size`` bytes of storages and drops a previous save's appended bytes."""
        if self.map is not None and size <= self.capacity:
            os.ftruncate(self.fd, self.capacity)
            if pin and not self.pinned:
                self._pin()
            return
        self.close()
        capacity = max(_GROWTH, -(-size // _GROWTH) * _GROWTH)
        if hasattr(os, "memfd_create"):
            self.fd = os.memfd_create("ckstore-snapshot", getattr(os, "MFD_CLOEXEC", 0))
        else:  # no memfd (not Linux): a file in shared memory or the temporary folder, removed at close
            folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
            self.fd, self._path = tempfile.mkstemp(prefix="ckstore-snapshot-", dir=folder)
        os.ftruncate(self.fd, capacity)
        self.map = mmap.mmap(self.fd, capacity)
        self.capacity = capacity
        anchor = ctypes.c_char.from_buffer(self.map)
        self.base = ctypes.addressof(anchor)
        del anchor
        if pin:
            self._pin()

    def _pin(self) -> None:
        # Page-locked, so that copies from the GPU are DMA and may run asynchronously (what
        # `pin_memory=True` buffers do); skipped with a warning when the driver refuses.
        torch = _torch()
        status = torch.cuda.cudart().cudaHostRegister(self.base, self.capacity, 0)
        if int(status) == 0:
            self.pinned = True
        else:
            import warnings

            warnings.warn(f"ckstore: cannot pin the {self.capacity}-byte snapshot buffer (cudaHostRegister: {status}); "
                          "copies from the GPU go through pageable memory")

    def storage(self, offset: int, nbytes: int):
        """An untyped storage over bytes ``[offset, offset + nbytes)`` of the arena (no copy)."""
        torch = _torch()
        if nbytes == 0:
            return torch.UntypedStorage(0)
        return torch.frombuffer(self.map, dtype=torch.uint8, count=nbytes, offset=offset).untyped_storage()

    def append(self, data, offset: int) -> None:
        """Writes ``data`` at ``offset`` (at or past the arena's end) of the memory file."""
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset)
            view = view[written:]
            offset += written

    def close(self) -> None:
        if self.pinned and self.base:
            try:
                _torch().cuda.cudart().cudaHostUnregister(self.base)
            except Exception:
                pass
            self.pinned = False
        if self.map is not None:
            try:
                self.map.close()
            except BufferError:
                pass  # a snapshot tensor still refers to it: unmapped when the last one goes
            self.map = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self._path is not None:
            try:
                os.unlink(self._path)
            except OSError:
                pass
            self._path = None
        self.capacity = 0
        self.base = 0


class Snapshot:
    """A copy of a training state whose tensors live in an :class:`Arena`.

    ``state`` has the structure of the original with every tensor rebuilt over the arena's storages
    (on the CPU), sharing as the original shared."""

    def __init__(self, arena: Arena, state: Any, storages: int, nbytes: int):
        self.arena = arena
        self.state = state
        self.storages = storages
        self.nbytes = nbytes

    def range_of(self, tensor) -> Optional[Tuple[int, int]]:
        """Where a contiguous snapshot tensor's bytes are in the arena: ``(offset, length)``."""
        length = tensor.numel() * tensor.element_size()
        start = tensor.untyped_storage().data_ptr() + tensor.storage_offset() * tensor.element_size()
        return self.arena_range(start, length)

    def arena_range(self, address: int, length: int) -> Optional[Tuple[int, int]]:
        if self.arena.base and self.arena.base <= address and address + length <= self.arena.base + self.arena.capacity:
            return address - self.arena.base, length
        return None


def snapshot(state: Any, arena: Arena) -> Snapshot:
    """Copies ``state`` into ``arena``: every tensor storage it holds (on any device) once, and its
    structure by a pickle round trip. Returns when the copy is complete."""
    torch = _torch()
    found: Dict[int, Tuple[Any, Any]] = {}  # storage identity -> (untyped storage, dtype)
    order: List[int] = []

    class Finder(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, torch.storage.TypedStorage):
                untyped, dtype = obj._untyped_storage, obj.dtype
            elif torch.is_storage(obj):
                untyped, dtype = obj, None
            else:
                return None
            if untyped.device.type == "meta":
                raise ValueError("cannot save a tensor on the meta device: it has no data")
            key = untyped._cdata
            if key not in found:
                found[key] = (untyped, dtype)
                order.append(key)
            return ("storage", key, dtype)

    import io

    structure = io.BytesIO()
    Finder(structure, protocol=pickle.HIGHEST_PROTOCOL).dump(state)

    offsets = {}
    total = 0
    for key in order:
        offsets[key] = total
        total += -(-found[key][0].nbytes() // _ALIGNMENT) * _ALIGNMENT
    on_gpu = any(found[key][0].device.type == "cuda" for key in order)
    arena.reserve(total, pin=on_gpu)

    copies: Dict[int, Any] = {}
    for key in order:
        source = found[key][0]
        target = arena.storage(offsets[key], source.nbytes())
        if source.nbytes():
            target.copy_(source, non_blocking=source.device.type == "cuda")
        copies[key] = target
    if on_gpu:
        torch.cuda.synchronize()

    class Loader(pickle.Unpickler):
        def persistent_load(self, pid):
            _, key, dtype = pid
            untyped = copies[key]
            if dtype is None:
                return untyped
            return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)

    structure.seek(0)
    copy = Loader(structure).load()
    return Snapshot(arena, copy, len(order), total)


class Recorder:
    """A write-only file for ``torch.save``: writes that are snapshot storages become ranges of the
    arena; other bytes are appended to the memory file after the arena. ``pieces`` is the file."""

    def __init__(self, layout: "LayoutBuilder"):
        self._layout = layout
        self.pieces: List[List[int]] = []
        self._pending = bytearray()
        self._position = 0

    def write(self, data) -> int:
        address, length = _buffer_address(data)
        if length == 0:
            return 0
        found = self._layout.snapshot.arena_range(address, length)
        if found is None:
            self._pending += data
            self._position += length
        else:
            self.reference(*found)
        return length

    def inline(self, data: bytes) -> None:
        self._pending += data
        self._position += len(data)

    def reference(self, offset: int, length: int) -> None:
        self._flush()
        self._add(offset, length)
        self._position += length

    def tell(self) -> int:
        return self._position

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass  # what is written stays; ``finish`` ends the file

    def _flush(self) -> None:
        if self._pending:
            self._add(self._layout.append(self._pending), len(self._pending))
            self._pending = bytearray()

    def _add(self, offset: int, length: int) -> None:
        if self.pieces and self.pieces[-1][0] + self.pieces[-1][1] == offset:
            self.pieces[-1][1] += length
        else:
            self.pieces.append([offset, length])

    def finish(self) -> List[List[int]]:
        self._flush()
        return self.pieces


class LayoutBuilder:
    """The files of one checkpoint as ranges of a snapshot's memory file: the ``--layout`` of a put."""

    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot
        self._end = snapshot.arena.capacity
        self.files: List[Dict[str, Any]] = []
        self._lock = threading.Lock()

    def append(self, data) -> int:
        """Appends bytes after the arena; returns their offset."""
        with self._lock:
            offset = self._end
            self.snapshot.arena.append(data, offset)
            self._end += len(data)
            return offset

    def add_torch_save(self, path: str, obj: Any) -> None:
        """``path`` as ``torch.save(obj, file)`` writes it to a file object."""
        torch = _torch()
        recorder = Recorder(self)
        torch.save(obj, recorder)
        self.files.append({"path": path, "pieces": recorder.finish()})

    def add_safetensors(self, path: str, tensors: Dict[str, Any], metadata: Optional[Dict[str, str]]) -> None:
        """``path`` as safetensors' ``save_file(tensors, path, metadata)`` writes it: the header
        safetensors itself lays out (see :func:`safetensors_header`), then each tensor's bytes."""
        header, order = safetensors_header(tensors, metadata)
        recorder = Recorder(self)
        recorder.inline(header)
        for name in order:
            tensor = tensors[name]
            if tensor.numel() == 0:
                continue
            found = self.snapshot.range_of(tensor)
            if found is None:
                recorder.inline(_tensor_bytes(tensor))
            else:
                recorder.reference(*found)
        self.files.append({"path": path, "pieces": recorder.finish()})

    def add_dcp(self, state: Any, process_group=None) -> None:
        """The files ``torch.distributed.checkpoint.save(state)`` writes for this rank (its
        ``__<rank>_0.distcp`` and, on the coordinator, ``.metadata``), by DCP's own file system writer
        over a file system whose files are recorders (:func:`dcp_writer`)."""
        import torch.distributed.checkpoint as dcp

        writer, files = dcp_writer(self)
        dcp.save(state, storage_writer=writer, process_group=process_group)
        for name in sorted(files):
            self.files.append({"path": name, "pieces": files[name].finish()})

    def layout(self) -> Dict[str, Any]:
        return {"source": self.snapshot.arena.source, "files": self.files}


def dcp_writer(layout: "LayoutBuilder"):
    """DCP's ``FileSystemWriter`` over files that are :class:`Recorder`\ s; returns the writer and the
    files it wrote by name (DCP renames ``.metadata.tmp`` to ``.metadata`` at the end, as on disk).
    ``sync_files`` is off: the store makes the checkpoint durable."""
    from contextlib import contextmanager

    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.filesystem import FileSystemBase

    root = "ckstore-layout"
    files: Dict[str, Recorder] = {}

    def name(path) -> str:
        text = str(path)
        if not text.startswith(root + "/"):
            raise ValueError(f"DCP wrote {text} outside its checkpoint folder")
        return text[len(root) + 1:]

    class Files(FileSystemBase):
        @contextmanager
        def create_stream(self, path, mode):
            if "w" not in mode:
                raise ValueError(f"a save does not read ({path}, mode {mode})")
            recorder = files[name(path)] = Recorder(layout)
            yield recorder

        def concat_path(self, path, suffix):
            return f"{path}/{suffix}"

        def rename(self, path, new_path):
            files[name(new_path)] = files.pop(name(path))

        def init_path(self, path):
            return str(path)

        def mkdir(self, path):
            pass

        @classmethod
        def validate_checkpoint_id(cls, checkpoint_id):
            return True

        def exists(self, path):
            return name(path) in files

        def rm_file(self, path):
            files.pop(name(path), None)

    writer = FileSystemWriter(root, sync_files=False)
    writer.fs = Files()
    writer.path = root
    return writer, files


def _tensor_bytes(tensor) -> bytes:
    torch = _torch()
    return bytes(tensor.contiguous().view(torch.uint8).reshape(-1).numpy()) if tensor.numel() else b""


def safetensors_header(tensors: Dict[str, Any], metadata: Optional[Dict[str, str]]) -> Tuple[bytes, List[str]]:
    """The header safetensors writes for ``tensors`` (its 8-byte length, the JSON, the padding), and the
    order of their bytes after it.

    safetensors' serializer is asked to lay the tensors out with no data (every shape with a zero
    dimension), which orders them and names their dtypes and metadata as it would; the real shapes and
    offsets then replace the empty ones in that order, written as its JSON writer writes them, with the
    metadata's keys sorted."""
    from safetensors import serialize

    try:
        from safetensors import TensorSpec
    except ImportError:  # safetensors before 0.7: specs are dicts of bytes
        TensorSpec = None
    torch = _torch()
    empty = {}
    for name, tensor in tensors.items():
        dtype = str(tensor.dtype).split(".")[-1]
        if TensorSpec is not None:
            empty[name] = TensorSpec(dtype=dtype, shape=[0], data_ptr=_EMPTY_ADDRESS, data_len=0)
        else:
            empty[name] = {"dtype": dtype, "shape": [0], "data": b""}
    laid_out = bytes(serialize(empty, metadata=metadata))
    length = int.from_bytes(laid_out[:8], "little")
    parsed = json.loads(laid_out[8:8 + length].decode("utf-8"))
    out: Dict[str, Any] = {}
    order: List[str] = []
    offset = 0
    for name, entry in parsed.items():
        if name == "__metadata__":
            # safetensors writes the metadata in a hash map's order, which changes from call to call
            # when there is more than one key (tied weights): sorted here, one of its orders, so that
            # the same state always gives the same bytes.
            out[name] = dict(sorted(entry.items()))
            continue
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        rebuilt = {}
        for key, value in entry.items():
            if key == "shape":
                value = list(tensor.shape)
            elif key == "data_offsets":
                value = [offset, offset + size]
            rebuilt[key] = value
        out[name] = rebuilt
        order.append(name)
        offset += size
    text = json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    return len(text).to_bytes(8, "little") + text, order


_EMPTY = ctypes.create_string_buffer(8)
_EMPTY_ADDRESS = ctypes.addressof(_EMPTY)


def safetensors_state(model) -> Tuple[Dict[str, Any], Optional[Dict[str, str]]]:
    """What safetensors' ``save_model(model, …, metadata={"format": "pt"}, force_contiguous=True)``
    writes: the state dict without the duplicate names of tied weights (named in the metadata), every
    tensor contiguous. Raises as ``save_model`` does for tensors that still share memory."""
    from safetensors.torch import _remove_duplicate_names

    state_dict = model.state_dict()
    metadata = {"format": "pt"}
    for kept_name, removed in _remove_duplicate_names(state_dict).items():
        for name in removed:
            metadata.setdefault(name, kept_name)
            del state_dict[name]
    state_dict = {name: tensor.contiguous() for name, tensor in state_dict.items()}
    try:
        from safetensors.torch import _evaluate_tensors_for_save

        _evaluate_tensors_for_save(state_dict)
    except ImportError:
        pass
    return state_dict, metadata
