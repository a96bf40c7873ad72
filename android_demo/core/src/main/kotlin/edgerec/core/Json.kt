package edgerec.core

import org.json.JSONArray
import org.json.JSONObject

/** Thrown for a bundle, a feed or an input that cannot be used; the message says what and how to fix it. */
class EdgeRecException(message: String) : Exception(message)

/**
 * The subset of JSON Schema (draft 2020-12) that `edge_rec/bundle.schema.json` uses: type, required,
 * properties, additionalProperties, items, enum, const, pattern, minimum, exclusiveMinimum, minItems and
 * local `$ref`s (`#/$defs/...`). Returns every problem found, as `path: message`, so one run names them all.
 */
class SchemaValidator(private val root: JSONObject) {
    fun errors(doc: Any?): List<String> {
        val out = mutableListOf<String>()
        check(root, doc, "$", out)
        return out
    }

    private fun resolve(ref: String): JSONObject {
        require(ref.startsWith("#/")) { "only local \$refs are supported, got $ref" }
        var node: Any = root
        for (part in ref.removePrefix("#/").split("/")) node = (node as JSONObject).get(part)
        return node as JSONObject
    }

    private fun typeOk(type: String, v: Any?): Boolean = when (type) {
        "object" -> v is JSONObject
        "array" -> v is JSONArray
        "string" -> v is String
        "integer" -> (v is Int || v is Long) || (v is Double && v == Math.floor(v) && !v.isInfinite())
        "number" -> v is Number
        "boolean" -> v is Boolean
        "null" -> v == null || v == JSONObject.NULL
        else -> false
    }

    private fun check(s: JSONObject, v: Any?, path: String, out: MutableList<String>) {
        if (s.has("\$ref")) { check(resolve(s.getString("\$ref")), v, path, out); return }
        if (s.has("type")) {
            val t = s.get("type")
            val types = if (t is JSONArray) (0 until t.length()).map { t.getString(it) } else listOf(t as String)
            if (types.none { typeOk(it, v) }) { out += "$path: expected ${types.joinToString("|")}, got ${describe(v)}"; return }
        }
        if (s.has("const") && !same(s.get("const"), v)) out += "$path: must be ${s.get("const")}"
        if (s.has("enum")) {
            val e = s.getJSONArray("enum")
            if ((0 until e.length()).none { same(e.get(it), v) }) out += "$path: ${describe(v)} is not one of $e"
        }
        if (s.has("pattern") && v is String && !Regex(s.getString("pattern")).containsMatchIn(v))
            out += "$path: '$v' does not match ${s.getString("pattern")}"
        if (v is Number) {
            if (s.has("minimum") && v.toDouble() < s.getDouble("minimum")) out += "$path: $v < minimum ${s.get("minimum")}"
            if (s.has("exclusiveMinimum") && v.toDouble() <= s.getDouble("exclusiveMinimum"))
                out += "$path: $v <= exclusiveMinimum ${s.get("exclusiveMinimum")}"
        }
        if (v is JSONArray) {
            if (s.has("minItems") && v.length() < s.getInt("minItems")) out += "$path: fewer than ${s.getInt("minItems")} items"
            if (s.has("items")) for (i in 0 until v.length()) check(s.getJSONObject("items"), v.get(i), "$path[$i]", out)
        }
        if (v is JSONObject) {
            if (s.has("required")) {
                val r = s.getJSONArray("required")
                for (i in 0 until r.length()) if (!v.has(r.getString(i))) out += "$path: missing required '${r.getString(i)}'"
            }
            val props = if (s.has("properties")) s.getJSONObject("properties") else null
            val keys = v.keys()
            while (keys.hasNext()) {
                val k = keys.next() as String
                if (props != null && props.has(k)) check(props.getJSONObject(k), v.get(k), "$path.$k", out)
                else if (s.has("additionalProperties")) {
                    val ap = s.get("additionalProperties")
                    if (ap == false) out += "$path: unexpected property '$k'"
                    else if (ap is JSONObject) check(ap, v.get(k), "$path.$k", out)
                }
            }
        }
    }

    private fun same(a: Any?, b: Any?): Boolean =
        if (a is Number && b is Number) a.toDouble() == b.toDouble() else a == b

    private fun describe(v: Any?): String = when (v) {
        null, JSONObject.NULL -> "null"
        is JSONObject -> "object"
        is JSONArray -> "array"
        is String -> "string"
        else -> v::class.simpleName ?: "value"
    }
}

/** JSON numbers and arrays as Kotlin values (org.json as Android ships it). */
internal fun JSONArray.floats(): FloatArray = FloatArray(length()) { getDouble(it).toFloat() }
internal fun JSONArray.longs(): LongArray = LongArray(length()) { getLong(it) }
internal fun JSONArray.strings(): List<String> = (0 until length()).map { getString(it) }
internal fun JSONObject.optNumber(key: String, default: Double): Double =
    if (has(key) && !isNull(key)) getDouble(key) else default
