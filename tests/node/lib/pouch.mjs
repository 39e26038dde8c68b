// PouchDB 9 with the in-memory adapter (no native modules) and the HTTP adapter.
import PouchDB from 'pouchdb-core';
import memory from 'pouchdb-adapter-memory';
import http from 'pouchdb-adapter-http';
import replication from 'pouchdb-replication';

PouchDB.plugin(memory).plugin(http).plugin(replication);

let n = 0;
/** A fresh in-memory local database. */
export function localDb() {
  return new PouchDB(`local-${process.pid}-${Date.now()}-${n++}`, { adapter: 'memory' });
}

/** A remote database; `headers` are sent on every request. */
export function remoteDb(url, headers = {}) {
  return new PouchDB(url, {
    skip_setup: true,
    fetch: (u, opts) => {
      for (const [k, v] of Object.entries(headers)) opts.headers.set(k, v);
      return PouchDB.fetch(u, opts);
    },
  });
}

export { PouchDB };
