import { describe, expect, it } from 'vitest';
import { DashboardConfigError, dashboardConfigFrom } from './config.js';

describe('dashboardConfigFrom', () => {
  it('takes the scheduler URL and defaults to 0.0.0.0:8081', () => {
    expect(dashboardConfigFrom({ VMLB_SERVER: 'http://scheduler:8080/' })).toEqual({ server: 'http://scheduler:8080', host: '0.0.0.0', port: 8081 });
    expect(dashboardConfigFrom({ VMLB_SERVER: 'https://s', VMLB_DASHBOARD_HOST: '::', VMLB_DASHBOARD_PORT: '0' })).toEqual({ server: 'https://s', host: '::', port: 0 });
  });

  it('names every wrong variable at once', () => {
    let err: unknown;
    try {
      dashboardConfigFrom({ VMLB_DASHBOARD_PORT: 'http' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DashboardConfigError);
    expect((err as DashboardConfigError).problems).toEqual([
      "VMLB_SERVER: not set (the scheduler's URL, e.g. http://127.0.0.1:8080)",
      'VMLB_DASHBOARD_PORT must be a port number from 0 to 65535',
    ]);
    expect(() => dashboardConfigFrom({ VMLB_SERVER: 'http://s:8080/api' })).toThrow(/VMLB_SERVER must be an http\(s\) URL with no path/);
  });
});
