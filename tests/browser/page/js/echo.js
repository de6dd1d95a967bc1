// resources/js/echo.js of a Laravel app, with Reprise's replay module added (two lines).

import Echo from 'laravel-echo';
import { enableReplay } from 'reprise-replay';

// In a Vite build: `import Pusher from 'pusher-js'; window.Pusher = Pusher;`
const Pusher = window.Pusher;
const config = window.REVERB;

// Before `new Echo`: every socket pusher-js opens from now on resumes where it left off.
export const replay = enableReplay(Pusher, { storage: window.sessionStorage });

window.Echo = new Echo({
  broadcaster: 'reverb',
  key: config.key,
  wsHost: config.host,
  wsPort: config.port,
  wssPort: config.port,
  forceTLS: false,
  enabledTransports: ['ws', 'wss'],
});
