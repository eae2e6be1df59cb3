# Example HIPE job script (Jython 2.7). BatchProcess.py runs it once per obsid, with these
# variables set by lines it puts in front of this file:
#   obsid   the observation id, e.g. 1342191755
#   outDir  this job's output folder, ending in a path separator
#   jobName the job's name
# and a function:
#   batchResult(name, value)  records a number or a string for this obsid; the worker writes them
#                             to the table JOB__results (obsid, name, value, number) in the same
#                             transaction that marks the obsid done, so a script that fails after
#                             recording leaves none. `BatchProcess.py JOB results` lists them.
# In real HIPE you would fetch and reduce the observation here, e.g.
#   obs = getObservation(obsid, useHsa=True)
#   ... pipeline ...
#   saveObservation(obs, poolLocation=outDir)
# The stand-in has no HIPE tasks, so this example only derives a few facts from the obsid and
# writes them as a product, the way a reduction script would.
import os
import time
from java.lang import System

started = time.time()
od_guess = (obsid - 1342000000) // 10000
cacheDir = System.getProperty("hcss.ia.pal.pool.cache.dir")
print "Reducing obsid %d (job %s), pool cache %s" % (obsid, jobName, cacheDir)

product = os.path.join(outDir, "%d.txt" % obsid)
f = open(product, "w")
try:
    f.write("obsid=%d\n" % obsid)
    f.write("od_guess=%d\n" % od_guess)
    f.write("jython=%s\n" % System.getProperty("java.version"))
finally:
    f.close()
print "Wrote %s in %.2f s" % (product, time.time() - started)

# Numbers for a table of the whole job: kept aside now, written to SQL only if this script ends well.
batchResult("od_guess", od_guess)
batchResult("product", product)

# The original's route, still open: write to SQL yourself through JDBC (the MariaDB or MySQL jar on
# CLASSPATH; the stand-in adds Debian's). Nothing ties such rows to the obsid's success: a script
# that fails after the INSERT leaves its row behind.
#   from java.sql import DriverManager
#   conn = DriverManager.getConnection("jdbc:mariadb://mysqlserver/blkr", "hipeuser", "sqlpasswd")
#   try:
#       st = conn.prepareStatement("INSERT INTO my_results (obsid, od_guess) VALUES (?, ?)")
#       st.setLong(1, obsid)
#       st.setInt(2, od_guess)
#       st.executeUpdate()
#   finally:
#       conn.close()
