import assert from 'node:assert/strict';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { BatonError } from '../../src/errors.js';
import {
  MAX_ENV_FILE_BYTES,
  SecretMasker,
  parseEnvFile,
  readEnvFile,
  secretValues,
} from '../../src/supervisor/env-file.js';
import { tempDir } from '../../support/temp-dir.js';

const SECRET = 'hunter2-s3cr3t';

/** Asserts the code, and that the message names neither the secret nor any part of its line. */
function rejectsWith(code: string, ...mustName: string[]): (err: unknown) => boolean {
  return (err) => {
    assert.ok(err instanceof BatonError, String(err));
    assert.equal(err.code, code, err.message);
    assert.ok(!err.message.includes(SECRET), `message leaks the secret: ${err.message}`);
    assert.ok(!err.message.includes('s3cr3t'), `message leaks part of the secret: ${err.message}`);
    for (const s of mustName) assert.ok(err.message.includes(s), `"${s}" in: ${err.message}`);
    return true;
  };
}

describe('parseEnvFile', () => {
  const parse = (text: string): Record<string, string> => parseEnvFile(text, 'app.env');

  it('reads KEY=VALUE lines, skipping blanks and # or ; comments', () => {
    assert.deepEqual(parse('A=1\n\n# a comment\n; another\n  # indented\nB=two\n'), {
      A: '1',
      B: 'two',
    });
  });

  it('trims whitespace around the key and an unquoted value, not inside it', () => {
    assert.deepEqual(parse('  A  =  one two  \n\tB=\tx\t\n'), { A: 'one two', B: 'x' });
  });

  it('takes an empty value, the last of repeated keys, and a last line without newline', () => {
    assert.deepEqual(parse('A=\nB=1\nB=2'), { A: '', B: '2' });
  });

  it('keeps "=" and "#" inside a value', () => {
    assert.deepEqual(parse('URL=postgres://u:p@h/db?x=1#frag\n'), {
      URL: 'postgres://u:p@h/db?x=1#frag',
    });
  });

  it('reads double quotes with \\" \\\\ \\` \\$ escapes, keeping other backslashes as systemd does', () => {
    assert.deepEqual(parse('A="say \\"hi\\" \\\\ \\$HOME \\`x\\`"\nB="a\\nb"\nC="  spaced  "\n'), {
      A: 'say "hi" \\ $HOME `x`',
      B: 'a\\nb',
      C: '  spaced  ',
    });
  });

  it('reads single quotes literally', () => {
    assert.deepEqual(parse(`A='a \\" $B # x'\n`), { A: 'a \\" $B # x' });
  });

  it('lets quoted values span lines and joins parts', () => {
    assert.deepEqual(parse('A="line1\nline2"\nB=\'x\' "y"\nC=z\n'), {
      A: 'line1\nline2',
      B: 'xy',
      C: 'z',
    });
  });

  it('continues a line after a backslash-newline, and unescapes outside quotes', () => {
    assert.deepEqual(parse('A=one \\\ntwo\nB="x\\\ny"\nC=a\\ b\\\\c\\ \nD=4\n'), {
      A: 'one two',
      B: 'xy',
      C: 'a b\\c ',
      D: '4',
    });
  });

  it('treats CRLF line ends as line ends', () => {
    assert.deepEqual(parse('A=1\r\nB="2"\r\n'), { A: '1', B: '2' });
  });

  it('refuses a line without "=", naming the line but not its text', () => {
    assert.throws(() => parse(`A=1\n\n${SECRET}\n`), rejectsWith('ENV_FILE_INVALID', 'app.env:3'));
    assert.throws(() => parse(`A=1\n${SECRET}`), rejectsWith('ENV_FILE_INVALID', 'app.env:2'));
  });

  it('refuses an invalid name without repeating it', () => {
    assert.throws(() => parse(`${SECRET}=x\n`), rejectsWith('ENV_FILE_INVALID', 'app.env:1'));
    assert.throws(() => parse('export A=1\n'), rejectsWith('ENV_FILE_INVALID', 'app.env:1'));
    assert.throws(() => parse('1A=1\n'), rejectsWith('ENV_FILE_INVALID', 'app.env:1'));
  });

  it('refuses an unterminated quote, naming the key and the line it opened on', () => {
    assert.throws(
      () => parse(`A=1\nTOKEN="${SECRET}\nB=2\n`),
      rejectsWith('ENV_FILE_INVALID', 'app.env:2', 'TOKEN'),
    );
    assert.throws(
      () => parse(`TOKEN='${SECRET}`),
      rejectsWith('ENV_FILE_INVALID', 'app.env:1', 'TOKEN'),
    );
  });

  it('refuses a NUL byte', () => {
    assert.throws(() => parse(`A=${SECRET}\0\n`), rejectsWith('ENV_FILE_INVALID', 'app.env:1'));
  });
});

describe('readEnvFile', () => {
  it('reads a file that only its owner may write, readable by others or not', async () => {
    const tmp = await tempDir();
    try {
      const file = path.join(tmp.dir, 'app.env');
      await writeFile(file, `TOKEN=${SECRET}\n`);
      for (const mode of [0o600, 0o640, 0o644, 0o400]) {
        await chmod(file, mode);
        assert.deepEqual(await readEnvFile(file), { TOKEN: SECRET });
      }
    } finally {
      await tmp.cleanup();
    }
  });

  it('refuses a file its group or others may write', async () => {
    const tmp = await tempDir();
    try {
      const file = path.join(tmp.dir, 'app.env');
      await writeFile(file, `TOKEN=${SECRET}\n`);
      for (const mode of [0o660, 0o606, 0o666]) {
        await chmod(file, mode);
        await assert.rejects(readEnvFile(file), rejectsWith('ENV_FILE_INVALID', file, 'chmod'));
      }
    } finally {
      await tmp.cleanup();
    }
  });

  it('refuses a missing file or a directory, naming the path', async () => {
    const tmp = await tempDir();
    try {
      const missing = path.join(tmp.dir, 'missing.env');
      await assert.rejects(readEnvFile(missing), rejectsWith('ENV_FILE_UNREADABLE', missing));
      const dir = path.join(tmp.dir, 'dir.env');
      await mkdir(dir, { mode: 0o700 });
      await assert.rejects(readEnvFile(dir), rejectsWith('ENV_FILE_UNREADABLE', dir));
    } finally {
      await tmp.cleanup();
    }
  });

  it('refuses a file over 1 MiB', async () => {
    const tmp = await tempDir();
    try {
      const file = path.join(tmp.dir, 'big.env');
      await writeFile(file, `A=${'x'.repeat(MAX_ENV_FILE_BYTES)}\n`, { mode: 0o600 });
      await assert.rejects(readEnvFile(file), rejectsWith('ENV_FILE_INVALID', file));
    } finally {
      await tmp.cleanup();
    }
  });

  it('refuses invalid UTF-8 without showing it', async () => {
    const tmp = await tempDir();
    try {
      const file = path.join(tmp.dir, 'bad.env');
      await writeFile(file, Buffer.from([0x41, 0x3d, 0xff, 0xfe, 0x0a]), { mode: 0o600 });
      await assert.rejects(readEnvFile(file), rejectsWith('ENV_FILE_INVALID', file));
    } finally {
      await tmp.cleanup();
    }
  });

  it('reports syntax errors with the file and line', async () => {
    const tmp = await tempDir();
    try {
      const file = path.join(tmp.dir, 'app.env');
      await writeFile(file, `# secrets\n${SECRET}\n`, { mode: 0o600 });
      await assert.rejects(readEnvFile(file), rejectsWith('ENV_FILE_INVALID', `${file}:2`));
    } finally {
      await tmp.cleanup();
    }
  });
});

describe('SecretMasker', () => {
  it('masks every occurrence of each secret', () => {
    const masker = new SecretMasker(['s3cr3t', 'token-1']);
    assert.ok(masker.active);
    assert.equal(
      masker.mask('a s3cr3t and token-1, again s3cr3ts3cr3t'),
      'a *** and ***, again ***',
    );
  });

  it('masks a secret that contains another, and overlapping secrets, completely', () => {
    assert.equal(new SecretMasker(['abc', 'xxabcxx']).mask('1 xxabcxx 2 abc'), '1 *** 2 ***');
    assert.equal(new SecretMasker(['abcd', 'cdef']).mask('[abcdef]'), '[***]');
    assert.equal(new SecretMasker(['aba']).mask('ababa!'), '***!');
  });

  it('ignores empty values and is inactive with none', () => {
    const none = new SecretMasker(['', '']);
    assert.equal(none.active, false);
    assert.equal(none.mask('nothing to hide'), 'nothing to hide');
    assert.equal(new SecretMasker(['x']).mask('no match here'), 'no match here');
  });

  it('masks a secret with control characters as a STATUS= line shows it (made spaces)', () => {
    const masker = new SecretMasker(['pass\tword-42']);
    assert.equal(masker.mask('STATUS=connected with pass word-42'), 'STATUS=connected with ***');
    assert.equal(masker.mask('raw pass\tword-42'), 'raw ***');
  });

  it('masks the key-material lines of a multi-line secret, as output is masked line by line', () => {
    const key =
      '-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\nab\n  "type": "service_account",\n-----END KEY-----';
    const masker = new SecretMasker([key]);
    assert.equal(masker.mask('line: MIIEvQIBADANBgkqhkiG9w0B'), 'line: ***');
    // Armour, short lines and ordinary text would mask other output: not taken on their own.
    assert.equal(masker.mask('-----END KEY-----'), '-----END KEY-----');
    assert.equal(masker.mask('ab cd'), 'ab cd');
    assert.equal(masker.mask('"type": "service_account",'), '"type": "service_account",');
    assert.equal(masker.mask(`the key: ${key}`), 'the key: ***');
  });

  it('finds a cut that falls inside no secret: before the run of secrets around it, or after one that starts the text', () => {
    const masker = new SecretMasker(['secret', 'cret-x']);
    assert.equal(masker.longest, 6);
    assert.equal(masker.safeCut('ab secret cd', 5), 3, 'inside: back to its start');
    assert.equal(masker.safeCut('ab secret cd', 3), 3, 'at its start');
    assert.equal(masker.safeCut('ab secret cd', 9), 9, 'at its end');
    // Overlapping occurrences of two secrets: back past both.
    assert.equal(masker.safeCut('ab secret-x', 10), 3);
    assert.equal(new SecretMasker([]).safeCut('anything', 4), 4);
    // A run that starts the text: after it, never before (that would cut nothing off).
    assert.equal(masker.safeCut('secret-x and more', 4), 8);
  });

  it('escapes nothing: secrets are text, not patterns', () => {
    assert.equal(new SecretMasker(['a.b*']).mask('axb a.b* a.b'), 'axb *** a.b');
  });
});

describe('secretValues', () => {
  it('collects the secret keys from every env, once each, without empty values', () => {
    assert.deepEqual(
      secretValues(
        ['TOKEN', 'KEY', 'EMPTY'],
        { TOKEN: 'a', PUBLIC: 'p', EMPTY: '' },
        { TOKEN: 'b', KEY: 'a' },
      ).sort(),
      ['a', 'b'],
    );
    assert.deepEqual(secretValues([], { TOKEN: 'a' }), []);
  });
});
