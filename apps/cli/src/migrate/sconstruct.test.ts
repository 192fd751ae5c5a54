import { describe, expect, it } from 'vitest';
import { compressionOf } from './compression.js';
import { readSConstruct } from './sconstruct.js';

describe('readSConstruct', () => {
  const SCONS = `import re
CacheDir('scons_cache')

def fetch_base():
    name = 'Rocky-9-GenericCloud.qcow2'
    checksum = '0123456789abcdef0123456789abcdef'
    env = Environment()
    env.Command('build/%s' % name, '/bin/true', """
cd build && curl -sO https://images.example.org/rocky/{0}.xz && unxz {0}.xz
""".format(name))
`;

  it('finds the URL, filling in its placeholders, the md5 next to it and the cache folder', () => {
    expect(readSConstruct(SCONS)).toEqual({
      url: 'https://images.example.org/rocky/Rocky-9-GenericCloud.qcow2.xz',
      urls: ['https://images.example.org/rocky/Rocky-9-GenericCloud.qcow2.xz'],
      unresolved: undefined,
      md5: '0123456789abcdef0123456789abcdef',
      cacheDir: 'scons_cache',
    });
    expect(compressionOf('https://images.example.org/rocky/Rocky-9-GenericCloud.qcow2.xz')).toBe('xz');
    expect(compressionOf('https://x/a.qcow2?sig=1.gz')).toBe(null);
  });

  it('says when there are several URLs, one it cannot fill in, or none', () => {
    const two = readSConstruct(`A = "http://a.example/one.qcow2"\nB = "http://b.example/two.img"\n# "http://c.example/commented.qcow2"\n`);
    expect(two.url).toBeUndefined();
    expect(two.urls).toEqual(['http://a.example/one.qcow2', 'http://b.example/two.img']);
    expect(readSConstruct(`url = "http://a.example/%s" % os.environ['IMG']\n`)).toMatchObject({ url: undefined, unresolved: 'http://a.example/%s' });
    expect(readSConstruct(`CacheDir('c')\n`)).toMatchObject({ url: undefined, urls: [] });
  });

  it('fills in %s from the variable after %', () => {
    expect(readSConstruct(`img = 'deb.qcow2'\ncmd = "curl -O http://mirror.example/%s" % img\n`).url).toBe('http://mirror.example/deb.qcow2');
  });
});
