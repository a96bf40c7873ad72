package edgerec.core

import com.sun.jna.Function
import com.sun.jna.Memory
import com.sun.jna.NativeLibrary
import com.sun.jna.Pointer
import com.sun.jna.ptr.LongByReference
import com.sun.jna.ptr.PointerByReference

// JVM-only engines for tests and desktop tools: the app uses ai.onnxruntime / LiteRT's Android
// libraries instead (android_demo/app), the pure core (src/main) knows only InferenceEngine.

/**
 * ONNX Runtime through its C API (the `libonnxruntime.so` that ships in the onnxruntime wheel, or the
 * AAR on Android), called with JNA. The C API is a table of function pointers (`OrtApi`); the indices
 * below are its stable ABI order (onnxruntime_c_api.h, unchanged since 1.0 for these entries).
 */
class OrtJnaEngine(library: String, model: String, threads: Int = 1) : InferenceEngine {
    private companion object {
        const val GET_ERROR_MESSAGE = 2; const val CREATE_ENV = 3
        const val CREATE_SESSION = 7; const val RUN = 9; const val CREATE_SESSION_OPTIONS = 10
        const val SET_INTRA_OP_THREADS = 24; const val SESSION_INPUT_COUNT = 30; const val SESSION_OUTPUT_COUNT = 31
        const val SESSION_INPUT_NAME = 36; const val SESSION_OUTPUT_NAME = 37
        const val CREATE_TENSOR_WITH_DATA = 49; const val GET_TENSOR_MUTABLE_DATA = 51
        const val GET_DIMENSIONS_COUNT = 61; const val GET_DIMENSIONS = 62; const val GET_TENSOR_TYPE_AND_SHAPE = 65
        const val CREATE_CPU_MEMORY_INFO = 69; const val ALLOCATOR_FREE = 76; const val GET_DEFAULT_ALLOCATOR = 78
        const val RELEASE_ENV = 92; const val RELEASE_STATUS = 93; const val RELEASE_MEMORY_INFO = 94
        const val RELEASE_SESSION = 95; const val RELEASE_VALUE = 96; const val RELEASE_TYPE_SHAPE = 99
        const val RELEASE_SESSION_OPTIONS = 100
        const val ORT_API_VERSION = 17
        const val FLOAT = 1
    }

    override val name = "onnxruntime"
    private val lib = NativeLibrary.getInstance(library)
    private val api: Pointer
    private val env: Pointer
    private val options: Pointer
    private val session: Pointer
    private val memInfo: Pointer
    val inputNames: List<String>
    val outputNames: List<String>
    override val fixedN: Int? = null

    init {
        val base = lib.getFunction("OrtGetApiBase").invokePointer(arrayOf())
        val getApi = Function.getFunction(base.getPointer(0))
        api = getApi.invokePointer(arrayOf(ORT_API_VERSION))
            ?: throw EdgeRecException("$library does not offer ORT C API version $ORT_API_VERSION; use onnxruntime 1.17 or newer.")
        env = out { call(CREATE_ENV, 3, "edge-rec", it) }
        options = out { call(CREATE_SESSION_OPTIONS, it) }
        call(SET_INTRA_OP_THREADS, options, threads)
        session = out { call(CREATE_SESSION, env, model, options, it) }
        memInfo = out { call(CREATE_CPU_MEMORY_INFO, 1, 0, it) }   // OrtArenaAllocator, OrtMemTypeDefault
        val alloc = out { call(GET_DEFAULT_ALLOCATOR, it) }
        fun names(countFn: Int, nameFn: Int): List<String> {
            val n = LongByReference()
            call(countFn, session, n)
            return (0 until n.value).map { i ->
                val p = out { call(nameFn, session, i, alloc, it) }
                p.getString(0).also { _ -> fn(ALLOCATOR_FREE).invokePointer(arrayOf(alloc, p)) }
            }
        }
        inputNames = names(SESSION_INPUT_COUNT, SESSION_INPUT_NAME)
        outputNames = names(SESSION_OUTPUT_COUNT, SESSION_OUTPUT_NAME)
    }

    private fun fn(i: Int): Function = Function.getFunction(api.getPointer(i.toLong() * Native.POINTER_SIZE))

    /** Call an OrtApi entry that returns an OrtStatus*; a non-null status becomes an exception. */
    private fun call(i: Int, vararg args: Any?) {
        val status = fn(i).invokePointer(args)
        if (status != null) {
            val msg = fn(GET_ERROR_MESSAGE).invokeString(arrayOf(status), false)
            fn(RELEASE_STATUS).invokeVoid(arrayOf(status))
            throw EdgeRecException("onnxruntime: $msg")
        }
    }

    private inline fun out(block: (PointerByReference) -> Unit): Pointer {
        val ref = PointerByReference()
        block(ref)
        return ref.value
    }

    override fun run(inputs: Map<String, Tensor>): Map<String, Tensor> {
        val values = ArrayList<Pointer>()
        val buffers = ArrayList<Memory>()
        try {
            for (name in inputNames) {
                val t = inputs[name] ?: throw EdgeRecException("input '$name' is missing (have ${inputs.keys}).")
                val mem = Memory(maxOf(1, t.data.size).toLong() * 4).also { it.write(0, t.data, 0, t.data.size) }
                buffers += mem
                val shape = Memory(t.shape.size.toLong() * 8).also { it.write(0, t.shape, 0, t.shape.size) }
                buffers += shape
                values += out { call(CREATE_TENSOR_WITH_DATA, memInfo, mem, t.data.size.toLong() * 4, shape, t.shape.size.toLong(), FLOAT, it) }
            }
            val inNames = stringArray(inputNames, buffers)
            val outNames = stringArray(outputNames, buffers)
            val inVals = Memory(values.size.toLong() * Native.POINTER_SIZE).also { m -> values.forEachIndexed { i, p -> m.setPointer(i.toLong() * Native.POINTER_SIZE, p) } }
            val outVals = Memory(outputNames.size.toLong() * Native.POINTER_SIZE).also { it.clear() }
            call(RUN, session, null, inNames, inVals, values.size.toLong(), outNames, outputNames.size.toLong(), outVals)
            val result = LinkedHashMap<String, Tensor>()
            outputNames.forEachIndexed { j, name ->
                val v = outVals.getPointer(j.toLong() * Native.POINTER_SIZE)
                val info = out { call(GET_TENSOR_TYPE_AND_SHAPE, v, it) }
                val count = LongByReference().also { call(GET_DIMENSIONS_COUNT, info, it) }.value
                val dims = Memory(maxOf(1L, count) * 8)
                call(GET_DIMENSIONS, info, dims, count)
                val shape = dims.getLongArray(0, count.toInt())
                fn(RELEASE_TYPE_SHAPE).invokeVoid(arrayOf(info))
                val data = out { call(GET_TENSOR_MUTABLE_DATA, v, it) }
                val n = shape.fold(1L) { a, b -> a * b }.toInt()
                result[name] = Tensor(data.getFloatArray(0, n), shape)
                fn(RELEASE_VALUE).invokeVoid(arrayOf(v))
            }
            return result
        } finally {
            for (v in values) fn(RELEASE_VALUE).invokeVoid(arrayOf(v))
        }
    }

    private fun stringArray(items: List<String>, keep: MutableList<Memory>): Memory {
        val arr = Memory(items.size.toLong() * Native.POINTER_SIZE)
        items.forEachIndexed { i, s ->
            val b = s.toByteArray(Charsets.UTF_8)
            val m = Memory(b.size + 1L).also { it.write(0, b, 0, b.size); it.setByte(b.size.toLong(), 0) }
            keep += m
            arr.setPointer(i.toLong() * Native.POINTER_SIZE, m)
        }
        return arr
    }

    override fun close() {
        fn(RELEASE_SESSION).invokeVoid(arrayOf(session))
        fn(RELEASE_SESSION_OPTIONS).invokeVoid(arrayOf(options))
        fn(RELEASE_MEMORY_INFO).invokeVoid(arrayOf(memInfo))
        fn(RELEASE_ENV).invokeVoid(arrayOf(env))
    }
}



private object Native { val POINTER_SIZE: Int = com.sun.jna.Native.POINTER_SIZE }
