package edgerec.demo

import android.content.ContentValues
import android.content.Context
import android.database.sqlite.SQLiteDatabase
import android.database.sqlite.SQLiteOpenHelper
import edgerec.core.Event
import edgerec.core.EventCodec

/**
 * The viewer's behaviour on the device: SQLite in WAL mode, like `edge_rec.state.UserState`. Nothing
 * here is ever sent anywhere; `forget()` deletes it all.
 *
 * Like the Python store, an event is the item shown at an instant: recording the same `(item_id, ts)`
 * again (a retry, a replayed log) keeps the first copy. Every modality of an event is kept
 * ([EventCodec]; version 1 kept only the first, so history rows lost the others).
 */
class EventStore(context: Context) : SQLiteOpenHelper(context, "edge_rec_state.db", null, 2) {
    init { setWriteAheadLoggingEnabled(true) }

    override fun onCreate(db: SQLiteDatabase) {
        db.execSQL("""CREATE TABLE events (id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL, creator_id INTEGER,
            ts REAL NOT NULL, watch_ms REAL, duration_ms REAL, like_ INTEGER, skip INTEGER, emb_name TEXT, emb BLOB)""")
        db.execSQL("CREATE UNIQUE INDEX events_key ON events(item_id, ts)")
    }

    /** Version 1 had no event key: later copies of an event go (the first stays), then the key is built.
     *  (onUpgrade runs inside one transaction.) Its rows' single-modality embeddings still read. */
    override fun onUpgrade(db: SQLiteDatabase, oldVersion: Int, newVersion: Int) {
        if (oldVersion < 2) {
            db.execSQL("DELETE FROM events WHERE id NOT IN (SELECT MIN(id) FROM events GROUP BY item_id, ts)")
            db.execSQL("CREATE UNIQUE INDEX IF NOT EXISTS events_key ON events(item_id, ts)")
        }
    }

    fun record(e: Event) {
        val (names, blob) = EventCodec.encode(e.embeddings)
        writableDatabase.insertWithOnConflict("events", null, ContentValues().apply {
            put("item_id", e.itemId); put("creator_id", e.creatorId); put("ts", e.ts); put("watch_ms", e.watchMs)
            put("duration_ms", e.durationMs); put("like_", if (e.like) 1 else 0); put("skip", if (e.skip) 1 else 0)
            put("emb_name", names); put("emb", blob)
        }, SQLiteDatabase.CONFLICT_IGNORE)
    }

    /** The newest `limit` events, oldest first. */
    fun events(limit: Int): List<Event> = readableDatabase.rawQuery(
        "SELECT item_id, creator_id, ts, watch_ms, duration_ms, like_, skip, emb_name, emb FROM events ORDER BY ts DESC LIMIT ?",
        arrayOf(limit.toString())).use { c ->
        buildList {
            while (c.moveToNext()) {
                val emb = EventCodec.decode(if (c.isNull(7)) null else c.getString(7), if (c.isNull(8)) null else c.getBlob(8))
                add(Event(c.getLong(0), c.getDouble(2), c.getDouble(3), c.getDouble(4), c.getInt(5) == 1, c.getInt(6) == 1,
                          if (c.isNull(1)) null else c.getLong(1), null, emb))
            }
        }.reversed()
    }

    fun forget() { writableDatabase.delete("events", null, null); writableDatabase.execSQL("VACUUM") }
}
