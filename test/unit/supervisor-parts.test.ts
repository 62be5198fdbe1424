import assert from 'node:assert/strict';
import { appendFile, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { describe, it } from 'node:test';
import { readLines } from '../../src/protocol/lines.js';
import { inheritedFds } from '../../src/protocol/systemd.js';
import { SecretMasker } from '../../src/supervisor/env-file.js';
import { LogTail } from '../../src/supervisor/log-tail.js';
import { claimPidFile, releasePidFile, runningAgentPid } from '../../src/supervisor/pid-file.js';
import { resolveCommand } from '../../src/supervisor/process-util.js';
import { StateFile } from '../../src/supervisor/state.js';
import { tempDir, withTempDir } from '../../support/temp-dir.js';

describe('readLines', () => {
  it('splits across chunks and stops at an overlong line', () => {
    const stream = new PassThrough();
    const lines: string[] = [];
    let overflow = 0;
    readLines(
      stream,
      10,
      (l) => lines.push(l),
      () => overflow++,
    );
    stream.write('ab');
    stream.write('c\nde\n');
    stream.write('x'.repeat(11));
    stream.write('\nafter\n');
    assert.deepEqual(lines, ['abc', 'de']);
    assert.equal(overflow, 1);
  });
});

describe('inheritedFds (systemd protocol)', () => {
  it('maps names to fds from 3', () => {
    const fds = inheritedFds({
      LISTEN_FDS: '2',
      LISTEN_FDNAMES: 'http:admin',
      LISTEN_PID: String(process.pid),
    });
    assert.deepEqual(
      [...fds],
      [
        ['http', 3],
        ['admin', 4],
      ],
    );
  });
  it('ignores sockets meant for another pid', () => {
    assert.equal(inheritedFds({ LISTEN_FDS: '1', LISTEN_PID: '1' }).size, 0);
  });
  it('names unnamed fds by number', () => {
    assert.deepEqual([...inheritedFds({ LISTEN_FDS: '1' })], [['fd3', 3]]);
  });
});

describe('LogTail', () => {
  it('follows appended lines, keeps the last N, and cuts the file back past maxBytes', async () => {
    const tmp = await tempDir();
    try {
      const file = path.join(tmp.dir, 'gen.log');
      await writeFile(file, 'one\ntwo\n');
      const seen: string[] = [];
      const tail = new LogTail(file, 2, 64, (l) => seen.push(l));
      await tail.start(10_000);
      await tail.poll();
      await appendFile(file, 'three\nfour');
      await tail.poll();
      assert.deepEqual(seen, ['one', 'two', 'three']);
      assert.deepEqual(tail.lines(), ['two', 'three', 'four']);
      await appendFile(file, '\n' + 'y'.repeat(100) + '\n');
      await tail.poll();
      assert.equal((await readFile(file, 'utf8')).length, 0, 'cut back');
      await appendFile(file, 'five\n');
      await tail.stop();
      assert.deepEqual(seen.slice(-2), ['y'.repeat(100), 'five']);
    } finally {
      await tmp.cleanup();
    }
  });
});

describe('LogTail, hardened', () => {
  it('skips the hole of NUL bytes an app writing without O_APPEND leaves after a cut', () =>
    withTempDir(async (dir) => {
      const file = path.join(dir, 'gen.log');
      const seen: string[] = [];
      const tail = new LogTail(file, 10, 1000, (l) => seen.push(l));
      await tail.start(10_000);
      // The app's writes at its old offset after the tail cut the file back.
      await writeFile(file, Buffer.concat([Buffer.alloc(20_000), Buffer.from('after\n')]));
      await tail.poll();
      await tail.stop();
      assert.deepEqual(seen, ['after']);
    }));

  it('keeps a character whose bytes come in two reads whole', () =>
    withTempDir(async (dir) => {
      const file = path.join(dir, 'gen.log');
      await writeFile(file, Buffer.from([0x63, 0x61, 0x66, 0xc3]));
      const seen: string[] = [];
      const tail = new LogTail(file, 10, 1000, (l) => seen.push(l));
      await tail.start(10_000);
      await tail.poll();
      await appendFile(file, Buffer.from([0xa9, 0x0a]));
      await tail.poll();
      await tail.stop();
      assert.deepEqual(seen, ['café']);
    }));

  it('never shows a piece of a secret longer than a line, nor one held back for its end', () =>
    withTempDir(async (dir) => {
      const file = path.join(dir, 'gen.log');
      const long = Array.from({ length: 10_000 }, (_, i) => 'abcdefghij'[i % 7]).join('') + 'Z';
      const mid = 'Q'.repeat(4999) + 'Y';
      await writeFile(file, '');
      const seen: string[] = [];
      const masker = new SecretMasker([long, mid]);
      const tail = new LogTail(
        file,
        10,
        1_000_000,
        (l) => seen.push(l),
        () => masker,
      );
      await tail.start(10_000);
      // A secret longer than 8 KiB whose end has not come yet.
      await appendFile(file, `k=${long.slice(0, 9000)}`);
      await tail.poll();
      // A whole secret, then the first part of another.
      await appendFile(file, `${long.slice(9000)} ${mid} ${mid.slice(0, 3500)}`);
      await tail.poll();
      await appendFile(file, `${mid.slice(3500)} end\n`);
      await tail.stop();
      const text = seen.join('|');
      assert.equal(text.includes(long.slice(0, 40)), false, 'no piece of the long secret');
      assert.equal(text.includes('Q'.repeat(40)), false, 'no piece of the other');
      assert.equal(text.replace(/\|/g, ''), 'k=*** *** *** end');
    }));

  it('masks before it clips, and cuts a long unfinished line outside any secret', () =>
    withTempDir(async (dir) => {
      const file = path.join(dir, 'gen.log');
      await writeFile(file, '');
      const seen: string[] = [];
      const masker = new SecretMasker(['0123456789abcdef']);
      const tail = new LogTail(
        file,
        10,
        1_000_000,
        (l) => seen.push(l),
        () => masker,
      );
      await tail.start(10_000);
      await appendFile(file, `${'x'.repeat(8180)}0123456789abcdef!\n`);
      await appendFile(file, `${'y'.repeat(8210)}01234567`);
      await tail.poll();
      await appendFile(file, '89abcdef end\n');
      await tail.stop();
      assert.equal(seen[0], `${'x'.repeat(8180)}***!`);
      assert.ok(
        seen.every((l) => !/0123|cdef/.test(l)),
        seen.map((l) => l.slice(-30)).join(' | '),
      );
      assert.equal(seen.at(-1)!.endsWith('*** end'), true);
      assert.equal(
        tail.lines().every((l) => !/0123|cdef/.test(l)),
        true,
      );
    }));
});

describe('StateFile', () => {
  it('round-trips through an atomic write and rejects a damaged file with STATE_INVALID', async () => {
    const tmp = await tempDir();
    try {
      const file = path.join(tmp.dir, 'state.json');
      const a = new StateFile(file);
      await a.update((s) => {
        s.apps.web = { current: { id: 'v1', dir: '/srv/v1' }, nextGeneration: 4 };
      });
      const b = new StateFile(file);
      assert.equal((await b.load()).apps.web!.current!.id, 'v1');
      await writeFile(
        file,
        JSON.stringify({
          version: 1,
          agentPid: 1,
          updatedAt: '',
          apps: { web: { nextGeneration: 'x' } },
        }),
      );
      await assert.rejects(new StateFile(file).load(), { code: 'STATE_INVALID' });
    } finally {
      await tmp.cleanup();
    }
  });
});

describe('PID file', () => {
  it('treats a dead pid as stale and refuses a live agent', async () => {
    const tmp = await tempDir();
    try {
      const file = path.join(tmp.dir, 'agent.pid');
      await writeFile(file, '999999\n');
      assert.equal(await runningAgentPid(file), undefined);
      await claimPidFile(file);
      // This test process is not an agent by its command line, so its own pid reads as stale too.
      assert.equal(Number((await readFile(file, 'utf8')).trim()), process.pid);
      await releasePidFile(file);
      await assert.rejects(readFile(file), { code: 'ENOENT' });
    } finally {
      await tmp.cleanup();
    }
  });
});

describe('resolveCommand', () => {
  it('finds a program on PATH and refuses a missing one with COMMAND_NOT_FOUND', async () => {
    assert.match(await resolveCommand('sh', '/', '/usr/bin:/bin'), /^\/(usr\/)?bin\/sh$/);
    await assert.rejects(resolveCommand('no-such-program-xyz', '/', '/usr/bin:/bin'), {
      code: 'COMMAND_NOT_FOUND',
    });
    await assert.rejects(resolveCommand('./missing.sh', '/tmp', undefined), {
      code: 'COMMAND_NOT_FOUND',
    });
  });
});
