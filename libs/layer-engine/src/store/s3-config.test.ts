import { describe, expect, it } from 'vitest';
import { VmlbError } from '../errors.js';
import { s3ConfigFrom } from './s3-config.js';

const creds = { S3_ACCESS_KEY: 'ak', S3_SECRET_KEY: 'sk' };

function problems(url: string | undefined, env: NodeJS.ProcessEnv): string {
  try {
    s3ConfigFrom(url, env, { urlName: '--cache' });
  } catch (e) {
    expect(e).toBeInstanceOf(VmlbError);
    expect((e as VmlbError).code).toBe('S3_CONFIG');
    return (e as Error).message;
  }
  throw new Error('expected a configuration error');
}

describe('s3ConfigFrom', () => {
  it('reads bucket and prefix from the URL and the rest from the environment', () => {
    const c = s3ConfigFrom('s3://vmlb-cache/team/a/', { ...creds, S3_ENDPOINT: 'http://127.0.0.1:9000' });
    expect(c).toEqual({
      url: 's3://vmlb-cache/team/a',
      bucket: 'vmlb-cache',
      prefix: 'team/a/',
      endpoint: 'http://127.0.0.1:9000',
      host: '127.0.0.1',
      port: 9000,
      useSSL: false,
      accessKey: 'ak',
      secretKey: 'sk',
      region: 'us-east-1',
      pathStyle: true,
    });
  });

  it('defaults to AWS over TLS, no prefix, and takes the AWS_* key variables', () => {
    const c = s3ConfigFrom('s3://bucket', { AWS_ACCESS_KEY_ID: 'a', AWS_SECRET_ACCESS_KEY: 's', S3_REGION: 'eu-west-1' });
    expect(c).toMatchObject({ endpoint: 'https://s3.amazonaws.com', port: 443, useSSL: true, prefix: '', accessKey: 'a', secretKey: 's', region: 'eu-west-1' });
  });

  it('prefers S3_* over AWS_* and treats an empty variable as unset', () => {
    const c = s3ConfigFrom('s3://bucket/p', { S3_ACCESS_KEY: 'mine', AWS_ACCESS_KEY_ID: 'aws', S3_SECRET_KEY: 's', S3_ENDPOINT: '', S3_REGION: ' ' });
    expect(c).toMatchObject({ accessKey: 'mine', endpoint: 'https://s3.amazonaws.com', region: 'us-east-1' });
  });

  it('reports every problem at once, naming the variable', () => {
    const msg = problems('s3://', { S3_ENDPOINT: 'ftp://host' });
    expect(msg).toContain('4 problems');
    expect(msg).toMatch(/--cache: .*names no bucket/);
    expect(msg).toMatch(/S3_ENDPOINT: .*http or https/);
    expect(msg).toMatch(/S3_ACCESS_KEY: is not set/);
    expect(msg).toMatch(/S3_SECRET_KEY: is not set/);
  });

  it('refuses bad URLs, bucket names and endpoints', () => {
    expect(problems(undefined, creds)).toMatch(/--cache: is not set/);
    expect(problems('https://bucket/x', creds)).toMatch(/not an s3:\/\/BUCKET\/PREFIX URL/);
    expect(problems('s3://Upper_Case', creds)).toMatch(/not a valid bucket name/);
    expect(problems('s3://bucket/a/../b', creds)).toMatch(/\. or \.\. segments/);
    expect(problems('s3://bucket', { ...creds, S3_ENDPOINT: 'not a url' })).toMatch(/S3_ENDPOINT: .*not a URL/);
    expect(problems('s3://bucket', { ...creds, S3_ENDPOINT: 'http://minio:9000/bucket' })).toMatch(/S3_ENDPOINT: .*only scheme, host and port/);
  });
});
