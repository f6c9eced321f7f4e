// A cron function: every five minutes, remind patients of tomorrow's appointments.
// The zip the workflows build from this folder is what the sandbox Project runs
// (projects/sandbox.yaml: zambdas.notifications-updater.source).
export const index = async (input) => {
  const tomorrow = new Date(Date.now() + 24 * 60 * 60 * 1000).toISOString().slice(0, 10);
  return { statusCode: 200, body: JSON.stringify({ remindersFor: tomorrow }) };
};
